"""All colour maths of colorgan: sRGB <-> CIELAB on torch tensors and the L / ab scalings.

Conventions match scikit-image's `rgb2lab` / `lab2rgb` (sRGB primaries, D65 white, 2 degree observer).
Tensors are batched (N,3,H,W) float32 on any device; the conversions (not the gamut search) are differentiable.
This is the only module that knows the numbers 50 and 110: data, metrics, inference and serving import it.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["rgb_to_lab", "lab_to_rgb", "lab_to_linear", "fit_gamut", "gamut_scale", "srgb_to_linear",
           "linear_to_srgb", "norm_l", "denorm_l", "norm_ab", "denorm_ab", "lab_to_model", "model_to_rgb",
           "gray_rgb", "lightness_of_gray8", "lightness_of_rgb8", "sampled_ab", "SCALINGS"]

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
    "Apply a 3x3 colour matrix along the channel axis of (N,3,H,W)."
    return torch.einsum("ij,njhw->nihw", matrix.to(x.device, x.dtype), x)


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.device, like.dtype).view(1, 3, 1, 1)


def _check(x: torch.Tensor, space: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{space} must be a float tensor of shape (N,3,H,W), not {got}")


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    return torch.where(rgb > 0.04045, ((rgb.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4, rgb / 12.92)


def linear_to_srgb(lin: torch.Tensor) -> torch.Tensor:
    return torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=0.0031308) ** (1 / 2.4) - 0.055, lin * 12.92)


def _f(t: torch.Tensor) -> torch.Tensor:
    "CIELAB's companding of X/Xn, Y/Yn, Z/Zn."
    return torch.where(t > _EPS, t.clamp(min=_EPS) ** (1 / 3), _KAPPA * t + 16 / 116)


def _f_inv(f: torch.Tensor) -> torch.Tensor:
    return torch.where(f > 0.2068966, f ** 3, (f - 16 / 116) / _KAPPA)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    "sRGB in [0,1], (N,3,H,W) -> CIELAB (L in [0,100]), same shape, device and dtype."
    _check(rgb, "rgb")
    f = _f(_mix(_XYZ_FROM_RGB, srgb_to_linear(rgb)) / _per_channel(_WHITE_D65, rgb))
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


def lab_to_linear(lab: torch.Tensor) -> torch.Tensor:
    "CIELAB (N,3,H,W) -> linear sRGB, not clipped: a channel below 0 or above 1 is a colour outside sRGB."
    l, a, b = lab.unbind(1)
    fy = (l + 16) / 116
    xyz = _f_inv(torch.stack([fy + a / 500, fy, fy - b / 200], 1)) * _per_channel(_WHITE_D65, lab)
    return _mix(_RGB_FROM_XYZ, xyz)


GAMUT_STEPS = 10  # bisection steps of the chroma scale: 2**-10 of the predicted chroma, under 0.2 CIELAB units
_GAMUT_TOL = 1e-4  # linear sRGB slack: float error of colours on the gamut's surface, well under one 8-bit level


def _outside(lin: torch.Tensor) -> torch.Tensor:
    "(N,1,H,W): whether a linear sRGB colour has a channel outside [0,1] (beyond float slack)."
    return (lin - 0.5).abs().amax(1, keepdim=True) > 0.5 + _GAMUT_TOL


@torch.no_grad()
def gamut_scale(lab: torch.Tensor, where: torch.Tensor | None = None, steps: int = GAMUT_STEPS) -> torch.Tensor:
    """(N,1,H,W) factors in [0,1] for the chroma (L in [0,100]): 1 where the colour is in sRGB, else the largest
    factor found by bisection that brings it inside at the same L and hue (the gray of any L is inside).
    `where`, the (N,1,H,W) mask of colours outside, is computed when not given."""
    scale = torch.ones_like(lab[:, :1])
    where = _outside(lab_to_linear(lab)) if where is None else where
    if where.any():
        scale[where] = _bisect_chroma(*(lab[:, i:i + 1][where] for i in range(3)), steps)
    return scale


def _bisect_chroma(l: torch.Tensor, a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    "Flat (K,) colours outside sRGB -> their chroma factors; Y is fixed by L, so each step redoes only X and Z."
    m = _RGB_FROM_XYZ.to(l.device, l.dtype)
    xn, _, zn = _WHITE_D65.tolist()
    fy = (l + 16) / 116
    y_part = m[:, 1:2] * _f_inv(fy)
    lo, hi = torch.zeros_like(l), torch.ones_like(l)
    for _ in range(steps):
        mid = (lo + hi) / 2
        lin = m[:, :1] * (xn * _f_inv(fy + mid * a / 500)) + y_part + m[:, 2:] * (zn * _f_inv(fy - mid * b / 200))
        inside = ~_outside(lin[None])[0, 0]  # (3,K) as a batch of one: the same test as for whole images
        lo, hi = torch.where(inside, mid, lo), torch.where(inside, hi, mid)
    return lo


def fit_gamut(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB -> the nearest colours sRGB can show at the same lightness and hue: L clamped to [0,100], chroma
    reduced only where the colour lies outside sRGB (per pixel, vectorised, on the tensor's device). Per-channel
    clipping instead changes lightness (by over 10 units on saturated predictions) and hue."""
    return _fit_linear(lab)[0]


def _fit_linear(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    "(`fit_gamut(lab)`, its linear sRGB), the second conversion done only for the colours that were outside."
    l = lab[:, :1].clamp(0, 100)
    lab = torch.cat([l, lab[:, 1:]], 1)
    lin = lab_to_linear(lab)
    where = _outside(lin)
    if where.any():
        lab = torch.cat([l, lab[:, 1:] * gamut_scale(lab, where)], 1)
        pixels = where[:, 0]
        moved = lab.permute(0, 2, 3, 1)[pixels]  # (K,3)
        lin.permute(0, 2, 3, 1)[pixels] = lab_to_linear(moved.T[None, :, :, None])[0, :, :, 0].T
    return lab, lin


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    "CIELAB (N,3,H,W) -> sRGB in [0,1]; colours outside sRGB lose chroma at constant L and hue (`fit_gamut`)."
    _check(lab, "lab")
    return linear_to_srgb(_fit_linear(lab)[1].clamp(0, 1))


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
_LINEAR_OF_8BIT = srgb_to_linear(_LEVELS).float().numpy()          # sRGB level -> linear light
_L_OF_8BIT_GRAY = (116 * _f(srgb_to_linear(_LEVELS)) - 16).float().numpy()  # gray level -> CIELAB L
_Y_FROM_RGB = _XYZ_FROM_RGB[1].float().numpy()


def lightness_of_gray8(gray: np.ndarray) -> torch.Tensor:
    "uint8 gray (H,W) -> CIELAB L as (1,1,H,W) float32: one table lookup a pixel."
    return torch.from_numpy(_L_OF_8BIT_GRAY[gray])[None, None]


def lightness_of_rgb8(rgb: np.ndarray, strip_rows: int = 256) -> torch.Tensor:
    """uint8 sRGB (H,W,3) -> CIELAB L as (1,1,H,W) float32: L depends on Y alone, so this is one table lookup, one
    dot product and one cube root a pixel, in strips of rows (bounded temporaries for a 12 MP photo)."""
    h, w = rgb.shape[:2]
    out = torch.empty(1, 1, h, w)
    for top in range(0, h, strip_rows):
        y = torch.from_numpy(_LINEAR_OF_8BIT[rgb[top:top + strip_rows]] @ _Y_FROM_RGB)
        out[0, 0, top:top + strip_rows] = 116 * _f(y) - 16
    return out
