"""All colour maths of colorgan: sRGB <-> CIELAB on torch tensors and the L / ab scalings.

Conventions match scikit-image's `rgb2lab` / `lab2rgb` (sRGB primaries, D65 white, 2 degree observer).
Tensors are batched (N,3,H,W) float32 on any device and every function is differentiable.
This is the only module that knows the numbers 50 and 110: data, metrics, inference and serving import it.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = ["rgb_to_lab", "lab_to_rgb", "norm_l", "denorm_l", "norm_ab", "denorm_ab", "lab_to_model",
           "model_to_rgb", "pil_to_rgb_array", "pil_to_rgb8", "pil_to_l", "is_grayscale", "SCALINGS"]

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


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    "sRGB in [0,1], (N,3,H,W) -> CIELAB (L in [0,100]), same shape, device and dtype."
    lin = torch.where(rgb > 0.04045, ((rgb.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = _mix(_XYZ_FROM_RGB, lin) / _per_channel(_WHITE_D65, rgb)
    f = torch.where(xyz > _EPS, xyz.clamp(min=_EPS) ** (1 / 3), _KAPPA * xyz + 16 / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    "CIELAB (N,3,H,W) -> sRGB in [0,1], clipped to the gamut."
    l, a, b = lab.unbind(1)
    fy = (l + 16) / 116
    f = torch.stack([fy + a / 500, fy, (fy - b / 200).clamp(min=0)], 1)
    xyz = torch.where(f > 0.2068966, f ** 3, (f - 16 / 116) / _KAPPA) * _per_channel(_WHITE_D65, lab)
    lin = _mix(_RGB_FROM_XYZ, xyz)
    srgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=0.0031308) ** (1 / 2.4) - 0.055, lin * 12.92)
    return srgb.clamp(0, 1)


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


_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_GRAY_MODES = {"1", "L", "LA"} | _WIDE_MODES


def _wide_gray(img: Image.Image) -> np.ndarray:
    "A 16-bit, 32-bit or float gray image -> float32 (H,W) in [0,1], keeping its full precision."
    arr = np.asarray(img, dtype=np.float32)
    if img.mode == "F":
        return np.clip(arr, 0, 1)
    peak = 255.0 if img.mode == "I" and arr.max(initial=0) <= 255 else 65535.0
    return np.clip(arr / peak, 0, 1)


def pil_to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL image -> float32 sRGB array (H,W,3) in [0,1], EXIF orientation applied.

    Handles RGB, RGBA, 8- and 16-bit gray, LA, palette (with transparency), CMYK and float images; 16-bit
    gray keeps its full precision. Alpha is dropped (a colorizer works on what is painted, not on coverage).
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in _WIDE_MODES:
        return np.repeat(_wide_gray(img)[..., None], 3, axis=2)
    return np.asarray(pil_to_rgb8(img), dtype=np.float32) / 255.0


def pil_to_rgb8(img: Image.Image) -> Image.Image:
    "Any PIL image -> an 8-bit RGB PIL image (16-bit gray rounded to 8 bits). Apply EXIF orientation first."
    if img.mode in _WIDE_MODES:
        return Image.fromarray((_wide_gray(img) * 255 + 0.5).astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    return img.convert("RGB")


def pil_to_l(img: Image.Image) -> torch.Tensor:
    "Any PIL image -> its CIELAB lightness as a (1,1,H,W) float32 tensor in [0,100]."
    rgb = torch.from_numpy(pil_to_rgb_array(img)).permute(2, 0, 1)[None]
    return rgb_to_lab(rgb)[:, :1]


def is_grayscale(img: Image.Image | np.ndarray, tolerance: int = 6, max_fraction: float = 0.01) -> bool:
    """Whether an image carries no colour: a gray mode, or RGB whose channels agree (within `tolerance` of 255)
    on all but `max_fraction` of its pixels, which forgives JPEG's chroma noise in gray photos saved as RGB."""
    if isinstance(img, Image.Image):
        if img.mode in _GRAY_MODES:
            return True
        img = np.asarray(img.convert("RGB"))
    spread = img.max(axis=-1).astype(np.int16) - img.min(axis=-1).astype(np.int16)
    return float(np.mean(spread > tolerance)) <= max_fraction
