"""All colour maths of colorgan: sRGB <-> CIELAB on torch tensors and the L / ab scalings.

Conventions match scikit-image's `rgb2lab` / `lab2rgb` (sRGB primaries, D65 white, 2 degree observer).
Tensors are batched (N,3,H,W) float32 on any device; the conversions (not the gamut search) are differentiable.
This is the only module that knows the numbers 50 and 110: data, metrics, inference and serving import it.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = ["rgb_to_lab", "lab_to_rgb", "lab_to_linear", "fit_gamut", "gamut_scale", "srgb_to_linear",
           "linear_to_srgb", "norm_l", "denorm_l", "norm_ab", "denorm_ab", "lab_to_model", "model_to_rgb",
           "gray_rgb", "lightness_of_gray8", "lightness_of_rgb8", "sampled_ab", "SCALINGS", "lab_to_rgb8",
           "rgb8_and_redo", "chroma_table"]

# sRGB -> XYZ (D65) and the D65 reference white, as in skimage.color.colorconv
_XYZ_FROM_RGB = torch.tensor([[0.412453, 0.357580, 0.180423],
                              [0.212671, 0.715160, 0.072169],
                              [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
_RGB_FROM_XYZ = torch.linalg.inv(_XYZ_FROM_RGB)
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
_EPS, _KAPPA = 0.008856, 7.787  # the CIE cube-root threshold and the slope below it (skimage's values)

# The model's scalings: L in [0, 100] -> [-1, 1]; ab / 110 -> about [-1, 1] (pix2pix's choice: the sRGB gamut's
# a and b lie within [-86, 98] and [-108, 95], so 110 keeps every colour inside the generator's bounded output).
L_CENTER, L_HALF_RANGE, AB_SCALE = 50.0, 50.0, 110.0
SCALINGS = {"l_center": L_CENTER, "l_half_range": L_HALF_RANGE, "ab_scale": AB_SCALE}


def _mix(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply a (3,C) colour matrix along the channel axis of (N,C,H,W), as one multiply and C - 1 in-place
    multiply-adds, which beat an einsum (a batched matrix product of inner size C, then a copy back to NCHW) on a
    CPU: `_linear_at` of a strip of 64 x 4000 took 0.59 ms against 0.75. (What torch.compile fuses is written on
    planes: `_planes_rgb8_and_redo`.)"""
    columns = matrix.to(x.device, x.dtype).T.reshape(-1, 1, matrix.shape[0], 1, 1)
    out = columns[0] * x[:, :1]
    for j in range(1, x.shape[1]):
        out.addcmul_(columns[j], x[:, j:j + 1])
    return out


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.device, like.dtype).view(1, 3, 1, 1)


def _check(x: torch.Tensor, space: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{space} must be a float tensor of shape (N,3,H,W), not {got}")


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    c = rgb.clamp(min=0.04045)  # branch-free: the curve above the knee plus the line's rise below it
    return ((c + 0.055) / 1.055) ** 2.4 + (rgb - c) / 12.92


def linear_to_srgb(lin: torch.Tensor) -> torch.Tensor:
    c = lin.clamp(min=0.0031308)
    return 1.055 * c ** (1 / 2.4) - 0.055 + 12.92 * (lin - c)


_F_KNEE = _KAPPA * _EPS + 16 / 116  # f at the threshold, where its cube root part meets its linear part


def _f(t: torch.Tensor) -> torch.Tensor:
    "CIELAB's companding of X/Xn, Y/Yn, Z/Zn (branch-free: the two parts meet at the threshold)."
    c = t.clamp(min=_EPS)
    return c ** (1 / 3) + _KAPPA * (t - c)


def _f_inv(f: torch.Tensor) -> torch.Tensor:
    c = f.clamp(min=_F_KNEE)
    return c * c * c + (f - c) / _KAPPA


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    "sRGB in [0,1], (N,3,H,W) -> CIELAB (L in [0,100]), same shape, device and dtype."
    _check(rgb, "rgb")
    f = _f(_mix(_XYZ_FROM_RGB, srgb_to_linear(rgb)) / _per_channel(_WHITE_D65, rgb))
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


_LINEAR_FROM_F = _RGB_FROM_XYZ * _WHITE_D65  # linear sRGB from (f_inv(fx), f_inv(fy), f_inv(fz)): Xn, Yn, Zn folded in


def lab_to_linear(lab: torch.Tensor) -> torch.Tensor:
    "CIELAB (N,3,H,W) -> linear sRGB, not clipped: a channel below 0 or above 1 is a colour outside sRGB."
    l, a, b = lab.unbind(1)
    fy = (l + 16) / 116
    return _mix(_LINEAR_FROM_F, _f_inv(torch.stack([fy + a / 500, fy, fy - b / 200], 1)))


GAMUT_TOL = 1e-4  # linear sRGB slack: float error of colours on the gamut's surface, well under one 8-bit level
_AIM = 0.9 * GAMUT_TOL  # where the chroma search puts the channel it stops at: in the slack, room for float error
_TABLE_L, _TABLE_HUE, _TABLE_CHROMA = 101, 512, 150.0  # the chroma table's exact grid (L, hue) and its ceiling
_FINE_L, _FINE_HUE = 4, 2  # the grid it is looked up on, this many times finer (bilinear from the exact one; 1.6 MB)
_TRUST = 2.0  # CIELAB chroma units: a Newton step longer than this is not trusted, and bisection redoes the colour
_RESIDUAL = 4 * GAMUT_TOL  # nor is a colour the step leaves farther outside than this (the final clip takes less)
_FALLBACK_STEPS = 16  # bisection steps for those colours (0.1% of random Lab colours, near the yellow corner)


def _reach(lin: torch.Tensor) -> torch.Tensor:
    "(N,1,H,W): how far a linear sRGB colour's farthest channel lies from 0.5 (over 0.5: outside [0,1])."
    return (lin - 0.5).abs_().amax(1, keepdim=True)


def _outside(lin: torch.Tensor) -> torch.Tensor:
    "(N,1,H,W): whether a linear sRGB colour has a channel outside [0,1] (beyond float slack)."
    return _reach(lin) > 0.5 + GAMUT_TOL


@functools.cache
def chroma_table(device: str) -> torch.Tensor:
    """The flat table `_table_scale` reads, for `rgb8_and_redo`: the largest chroma inside sRGB on a grid of (L,
    hue), row-major, _FINE_L rows a unit of L (0..100) and _FINE_HUE * _TABLE_HUE + 1 columns (hue -pi..pi, the
    last column the first again), so that a lookup is one gather at the nearest grid point. Computed once a process
    in float64 on the CPU on the coarser grid of _TABLE_L x _TABLE_HUE + 1 (a scan in 64 steps, then bisection: the
    slice of sRGB at one L and hue is not always one interval, near the yellow corner it has two, and the scan finds
    the outer one; about 0.2 s), then interpolated bilinearly onto the fine grid."""
    l = torch.linspace(0, 100, _TABLE_L, dtype=torch.float64)[:, None].expand(-1, _TABLE_HUE + 1).reshape(-1)
    hue = torch.linspace(-math.pi, math.pi, _TABLE_HUE + 1, dtype=torch.float64).repeat(_TABLE_L)
    cos, sin = hue.cos(), hue.sin()

    def inside(c):
        return ~_outside(lab_to_linear(torch.stack([l, c * cos, c * sin])[None, :, :, None]))[0, 0, :, 0]
    scan, step = 64, _TABLE_CHROMA / 64
    lo = torch.zeros_like(l)
    for i in range(1, scan + 1):
        lo = torch.where(inside(torch.full_like(l, i * step)), i * step, lo)
    hi = lo + step
    for _ in range(30):
        mid = (lo + hi) / 2
        ok = inside(mid)
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    grid = lo.view(_TABLE_L, _TABLE_HUE + 1)
    for dim, fine in ((0, _FINE_L), (1, _FINE_HUE)):  # bilinear, one axis at a time
        cells = grid.shape[dim] - 1
        at = torch.arange(cells * fine + 1, dtype=torch.float64) / fine
        i = at.floor().clamp_(max=cells - 1)
        weight = (at - i).view(-1, 1) if dim == 0 else at - i
        i = i.long()
        grid = torch.lerp(grid.index_select(dim, i), grid.index_select(dim, i + 1), weight)
    return grid.reshape(-1).float().to(device)


def _lookup(table: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    "`table[at]` for a 1-D table, by index_select: several times faster on a CPU than advanced indexing's kernel."
    return table.index_select(0, at.reshape(-1)).view(at.shape)


def _table_scale(l: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                 table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,1,H,W) first guesses of the chroma factor (the largest chroma at (L, hue) of `chroma_table`, at the
    nearest point of its grid, over the chroma), and the chroma. L must lie in [0, 100]. One gather with an int32
    index: a bilinear lookup on the coarse grid (four gathers, three lerps) took 1.6x as long in a strip, eager,
    for a first guess that the Newton step makes exact either way (bisection left 1,471 of the 1.66 million colours
    outside among 2 million random Lab colours, against 979)."""
    columns = _TABLE_HUE * _FINE_HUE + 1
    hue = torch.atan2(b, a).add_(math.pi).mul_((columns - 1) / (2 * math.pi)).round_()  # 0..columns - 1
    at = (l * (_FINE_L * (_TABLE_L - 1) / 100)).round_().mul_(columns).add_(hue).int()
    chroma = torch.hypot(a, b)
    return _lookup(table, at).div_(chroma.clamp(min=1e-6)).clamp_(max=1), chroma


# linear sRGB from (f_inv(fx), f_inv(fz)), and from f_inv(fy): the Y column apart, since Y is fixed by L
_FROM_FXZ, _FROM_FY = _LINEAR_FROM_F[:, [0, 2]], _LINEAR_FROM_F[:, 1]


def _chroma_parts(fy: torch.Tensor, pq: torch.Tensor, s: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    "(f_inv(fx), f_inv(fz)) at chroma factor `s` (None: 1), and their square knee-clamped f (for the derivative)."
    f = fy + pq if s is None else torch.addcmul(fy, pq, s)  # (fx, fz) = fy + s * (a / 500, -b / 200)
    c = f.clamp(min=_F_KNEE)
    c2 = c * c
    return torch.addcmul((f - c).div_(_KAPPA), c2, c), c2  # the cube above the knee, the line below it


def _linear_of(parts: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    "(N,3,H,W) linear sRGB from (f_inv(fx), f_inv(fz)) (N,2,H,W) and f_inv(fy) (N,1,H,W)."
    return _mix(_FROM_FXZ, parts).addcmul_(_per_channel(_FROM_FY, y), y)


def _linear_at(fy: torch.Tensor, y: torch.Tensor, pq: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
    "(N,3,H,W) linear sRGB at chroma factor `s` (None: 1) of the colours `_lab_parts` split."
    return _linear_of(_chroma_parts(fy, pq, s)[0], y)


def _newton_scale(fy: torch.Tensor, y: torch.Tensor, pq: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """One Newton step from the chroma factors `s` to where the first channel reaches its bound. For a fixed L and
    hue each linear sRGB channel is a piecewise cubic of the factor (Y is fixed by L; X and Z are f_inv of a line
    in it); each channel gives the root of its line towards the bound it heads for as chroma grows
    ((1 + aim - lin) / slope rising, (-aim - lin) / slope falling: the bound is 0.5 +- (0.5 + aim), the sign the
    slope's), and the nearest root wins. A step to below half of `s` is not trusted (the table was far off there):
    it stops at half, and the check after it decides."""
    parts, c2 = _chroma_parts(fy, pq, s)
    lin = _linear_of(parts, y)
    slope = _mix(_FROM_FXZ, c2.mul_(pq).mul_(3))  # d lin / ds: f_inv's two parts have the same slope at the knee
    step = torch.copysign(torch.tensor(0.5 + _AIM, dtype=slope.dtype), slope).add_(0.5).sub_(lin).div_(slope)
    root = torch.nan_to_num_(step.amin(1, keepdim=True), nan=1.0).add_(s)
    return torch.maximum(root, s * 0.5).clamp_(max=1)


@torch.no_grad()
def gamut_scale(lab: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
    """(N,1,H,W) factors in [0,1] for the chroma (L in [0,100]): 1 where the colour is in sRGB, else the one that
    brings it to sRGB's surface at the same L and hue (the gray of any L is inside); `where` is ignored (kept for
    callers that pass the mask of colours outside). See `_fit_linear`."""
    ab, fitted = lab[:, 1:], _fit_linear(lab)[0][:, 1:]
    chroma = ab.norm(dim=1, keepdim=True)
    return torch.where(chroma > 0, fitted.norm(dim=1, keepdim=True) / chroma.clamp(min=1e-12), 1.0).clamp_(max=1)


def _bisect_chroma(l: torch.Tensor, a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    "Flat (K,) colours outside sRGB -> chroma factors on the boundary, by bisection (each step redoes X and Z)."
    lo, hi = torch.zeros_like(l), torch.ones_like(l)
    for _ in range(steps):
        mid = (lo + hi) / 2
        inside = ~_outside(lab_to_linear(torch.stack([l, mid * a, mid * b])[None, :, :, None]))[0, 0, :, 0]
        lo, hi = torch.where(inside, mid, lo), torch.where(inside, hi, mid)
    return lo


def fit_gamut(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB -> the nearest colours sRGB can show at the same lightness and hue: L clamped to [0,100], chroma
    reduced only where the colour lies outside sRGB (per pixel, vectorised, on the tensor's device). Per-channel
    clipping instead changes lightness (by over 10 units on saturated predictions) and hue."""
    return _fit_linear(lab)[0]


def _fit_linear(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(`fit_gamut(lab)`, its linear sRGB), in a bounded number of vectorised passes whatever the share of colours
    outside sRGB: the conversion; where any colour is outside, a table of the largest chroma at each (L, hue) gives
    a first guess of its chroma factor, one Newton step on the channels makes it exact (to float error) and the
    conversion is redone at it (colours inside keep factor 1). The few colours still outside then (in the sliver
    near the yellow corner where a slice of sRGB is two intervals: 0.1% of random Lab colours) get bisection."""
    l, a, b, fy, y, pq = _lab_parts(lab)
    lin = _linear_at(fy, y, pq, None)
    reach = _reach(lin)
    if reach.max() <= 0.5 + GAMUT_TOL:
        return torch.cat([l, a, b], 1), lin
    with torch.no_grad():  # the factors are constants to autograd, as a clip's bounds would be
        scale, redo, _ = _gamut_factors(l, a, b, fy, y, pq, reach, chroma_table(str(lab.device)))
        if redo.any():
            scale[redo] = _bisect_chroma(l[redo], a[redo], b[redo], _FALLBACK_STEPS)
    return torch.cat([l, a * scale, b * scale], 1), _linear_at(fy, y, pq, scale)


def _lab_parts(lab: torch.Tensor) -> tuple[torch.Tensor, ...]:
    "L (clamped to [0,100]), a, b, fy, f_inv(fy) = Y and (a / 500, -b / 200), each (N,1,H,W) or (N,2,H,W)."
    l, a, b = lab[:, :1].clamp(0, 100), lab[:, 1:2], lab[:, 2:3]
    fy = (l + 16) / 116
    return l, a, b, fy, _f_inv(fy), torch.cat([a / 500, b / -200], 1)


def _gamut_factors(l, a, b, fy, y, pq, reach, table) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chroma factors of `_fit_linear` (1 inside), given the reach of its colours' channels from 0.5 (over 0.5:
    outside); where they are not trusted (bisection redoes those); the linear sRGB at the factors. Branch-free, so
    torch.compile fuses it."""
    outside = reach > 0.5 + GAMUT_TOL
    guess, chroma = _table_scale(l, a, b, table)
    scale = _newton_scale(fy, y, pq, guess)
    jumped = (scale - guess).abs().mul(chroma) > _TRUST  # the table was far off: near the yellow corner
    scale = torch.where(outside, scale, 1.0)
    lin = _linear_at(fy, y, pq, scale)
    return scale, ((_reach(lin) > 0.5 + _RESIDUAL) | jumped) & outside, lin


def rgb8_and_redo(lab: torch.Tensor, table: torch.Tensor | None = None,
                  fused=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`lab_to_rgb8` for a strip, bisection left to the caller: uint8 (N,H,W,3) and the (N,1,H,W) mask of colours
    the Newton step left untrusted (None: every colour is inside sRGB), whose 8-bit values the caller takes from
    `lab_to_rgb8` instead. Eager, a strip with every colour inside skips the gamut mapping, and one with a colour
    outside goes to `fused(lab, table)` when given (this function under torch.compile), else to the eager steps.
    Under torch.compile it is `_planes_rgb8_and_redo`, branch-free. `table`: `chroma_table(device)` (None: looked
    up when a colour is outside; torch.compile needs it passed)."""
    if torch.compiler.is_compiling():
        return _planes_rgb8_and_redo(lab, table)
    l, a, b, fy, y, pq = _lab_parts(lab)
    lin = _linear_at(fy, y, pq, None)
    reach = _reach(lin)
    if reach.max() <= 0.5 + GAMUT_TOL:
        return _to_8bit(lin), None
    if table is None:
        table = chroma_table(str(lab.device))
    if fused is not None:
        return fused(lab, table)
    _, redo, lin = _gamut_factors(l, a, b, fy, y, pq, reach, table)
    return _to_8bit(lin), redo


_PLANES = _LINEAR_FROM_F.tolist()  # rows r, g, b; columns the f_inv(fx), f_inv(fy), f_inv(fz) parts


def _planes_linear(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> list[torch.Tensor]:
    "Linear sRGB as three (N,1,H,W) planes from f_inv(fx), f_inv(fy), f_inv(fz)."
    return [m[0] * x + m[1] * y + m[2] * z for m in _PLANES]


def _planes_reach(rgb: list[torch.Tensor]) -> torch.Tensor:
    "`_reach` of three planes."
    r, g, b = ((c - 0.5).abs() for c in rgb)
    return torch.maximum(torch.maximum(r, g), b)


def _f_inv_and_slope(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    "`_f_inv` and its derivative (its two parts have the same slope at the knee)."
    c = f.clamp(min=_F_KNEE)
    return c * c * c + (f - c) / _KAPPA, 3 * c * c


def _planes_rgb8_and_redo(lab: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`rgb8_and_redo`'s steps (`_gamut_factors`: the conversion, the table's guess, one Newton step, the check) for
    torch.compile, on (N,1,H,W) planes: with no channel axis to reduce over, inductor fuses them into one loop
    over the pixels, then one for the 8 bits (the eager form, a tensor of channels and reductions over them,
    compiled to eight loops, some scalar: 0.40-0.47 s for a 12 MP photo's strips, this form 0.15-0.21 s)."""
    l, a, b = lab[:, :1].clamp(0, 100), lab[:, 1:2], lab[:, 2:3]
    fy = (l + 16) / 116
    y, px, pz = _f_inv(fy), a / 500, b / -200
    outside = _planes_reach(_planes_linear(_f_inv(fy + px), y, _f_inv(fy + pz))) > 0.5 + GAMUT_TOL
    guess, chroma = _table_scale(l, a, b, table)
    (x, dx), (z, dz) = _f_inv_and_slope(fy + guess * px), _f_inv_and_slope(fy + guess * pz)
    root = None
    for m, lin in zip(_PLANES, _planes_linear(x, y, z)):  # `_newton_scale`, a channel at a time
        slope = m[0] * dx * px + m[2] * dz * pz
        step = (torch.copysign(torch.full_like(slope, 0.5 + _AIM), slope) + 0.5 - lin) / slope
        root = step if root is None else torch.minimum(root, step)
    scale = torch.maximum(torch.nan_to_num(root, nan=1.0) + guess, guess * 0.5).clamp(max=1)
    jumped = (scale - guess).abs() * chroma > _TRUST
    scale = torch.where(outside, scale, 1.0)
    rgb = _planes_linear(_f_inv(fy + scale * px), y, _f_inv(fy + scale * pz))
    return _to_8bit(torch.cat(rgb, 1)), ((_planes_reach(rgb) > 0.5 + _RESIDUAL) | jumped) & outside


def _to_8bit(lin: torch.Tensor) -> torch.Tensor:
    """Linear sRGB (N,3,H,W) -> uint8 sRGB (N,H,W,3), the nearest level (clipped to [0,1] first): no power, two
    lookups a channel. A level's threshold in linear light is where its half-way point lies; the thresholds are
    never closer than 1/(255 * 12.92), so a grid of `_BUCKETS` cells holds at most one each: the level at the
    cell's start, plus one if the colour is past the cell's threshold."""
    x = lin.clamp(0, 1)
    starts, thresholds = _LEVEL_AT_CELL.to(x.device), _LEVEL_THRESHOLD.to(x.device)
    level = _lookup(starts, x.mul(_BUCKETS).long().clamp_(max=_BUCKETS - 1))
    return level.add((x >= _lookup(thresholds, level)).to(level.dtype)).permute(0, 2, 3, 1).to(torch.uint8)


def lab_to_rgb8(lab: torch.Tensor) -> torch.Tensor:
    "CIELAB (N,3,H,W) -> uint8 sRGB (N,H,W,3), colours outside sRGB fitted as `lab_to_rgb` does."
    _check(lab, "lab")
    return _to_8bit(_fit_linear(lab)[1])


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    "CIELAB (N,3,H,W) -> sRGB in [0,1]; colours outside sRGB lose chroma at constant L and hue (`fit_gamut`)."
    _check(lab, "lab")
    return linear_to_srgb(_fit_linear(lab)[1].clamp(0, 1)).clamp_(0, 1)


def norm_l(l: torch.Tensor) -> torch.Tensor: return l / L_HALF_RANGE - L_CENTER / L_HALF_RANGE
def denorm_l(l: torch.Tensor) -> torch.Tensor: return (l + L_CENTER / L_HALF_RANGE) * L_HALF_RANGE
def norm_ab(ab: torch.Tensor) -> torch.Tensor: return ab / AB_SCALE
def denorm_ab(ab: torch.Tensor) -> torch.Tensor: return ab * AB_SCALE


def lab_to_model(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    "CIELAB (N,3,H,W) -> the model's (L, ab) pair: (N,1,H,W) and (N,2,H,W), both scaled to about [-1,1]."
    return norm_l(lab[:, :1]), norm_ab(lab[:, 1:])


def model_to_rgb(l: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    "The model's scaled (L, ab) -> sRGB in [0,1]; computed in float32 whatever the inputs' precision."
    lab = torch.cat([denorm_l(l.float()), denorm_ab(ab.float())], 1)
    return lab_to_rgb(lab)


def sampled_ab(photos, max_pixels: int = 2_000_000, chunk: int = 256):
    """The model's scaled ab of uint8 photos (N,S,S,3) (an array or a training cache), chunk by chunk of photos:
    every photo, every k-th pixel of each along both axes, so that about `max_pixels` are read in all."""
    n, size = len(photos), photos.shape[1]
    step = max(1, math.ceil(math.sqrt(n * size * size / max_pixels)))
    for i in range(0, n, chunk):
        rgb = torch.from_numpy(np.ascontiguousarray(photos[np.arange(i, min(i + chunk, n))]))[:, ::step, ::step]
        yield lab_to_model(rgb_to_lab(rgb.permute(0, 3, 1, 2).float().div_(255)))[1]


def gray_rgb(l: torch.Tensor) -> torch.Tensor:
    "The model's scaled L (N,1,H,W) -> its gray sRGB (N,3,H,W): the one way colorgan renders a photo without colour."
    return model_to_rgb(l, torch.zeros_like(l).expand(-1, 2, -1, -1))


_LEVELS = torch.arange(256, dtype=torch.float64) / 255
_L_OF_8BIT_GRAY = (116 * _f(srgb_to_linear(_LEVELS)) - 16).float().numpy()  # gray level -> CIELAB L
_Y_OF_8BIT = (_XYZ_FROM_RGB[1, :, None] * srgb_to_linear(_LEVELS)).float().numpy()  # (3,256): each level's Y


_BUCKETS = 4096
# linear light where each level from 1 to 255 begins (half-way from the level below), then a sentinel past 1
_LEVEL_THRESHOLD = torch.cat([srgb_to_linear((torch.arange(1, 256, dtype=torch.float64) - 0.5) / 255),
                              torch.tensor([2.0], dtype=torch.float64)]).float()
_LEVEL_AT_CELL = torch.bucketize(torch.arange(_BUCKETS, dtype=torch.float32) / _BUCKETS, _LEVEL_THRESHOLD,
                                 right=True).to(torch.int32)  # the level at each cell's start


def lightness_of_gray8(gray: np.ndarray) -> torch.Tensor:
    "uint8 gray (H,W) -> CIELAB L as (1,1,H,W) float32: one table lookup a pixel."
    return torch.from_numpy(_L_OF_8BIT_GRAY[gray])[None, None]


def lightness_of_rgb8(rgb: np.ndarray, strip_rows: int = 256) -> torch.Tensor:
    """uint8 sRGB (H,W,3) -> CIELAB L as (1,1,H,W) float32: L depends on Y alone, so this is three table lookups
    (each level's linear light times its weight in Y), two sums and one cube root a pixel, in strips of rows
    (bounded temporaries for a 12 MP photo)."""
    h, w = rgb.shape[:2]
    out = torch.empty(1, 1, h, w)
    for top in range(0, h, strip_rows):
        strip = rgb[top:top + strip_rows]
        y = sum(np.take(_Y_OF_8BIT[c], strip[..., c]) for c in range(3))
        out[0, 0, top:top + strip_rows] = _f(torch.from_numpy(y)).mul_(116).sub_(16)
    return out
