"""Image-quality numbers on RGB in [0,1]: PSNR, colourfulness, and the fastai metrics built on them."""
from __future__ import annotations

import torch
from fastai.learner import Metric

from .color import model_to_rgb

__all__ = ["psnr", "colorfulness", "RGBMetric", "psnr_metric", "colorfulness_metric"]


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    "Per-image PSNR in dB of (N,C,H,W) batches; identical images give +inf."
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)


def colorfulness(rgb: torch.Tensor) -> torch.Tensor:
    """Hasler and Suesstrunk's M3 per image of an RGB batch in [0,1], on the 0-255 scale, in the absolute-opponent
    form the colorization papers use: rg=|R-G|, yb=|(R+G)/2-B|, M3 = sqrt(sd_rg^2+sd_yb^2) + 0.3 sqrt(mu_rg^2+mu_yb^2).
    A gray image scores 0."""
    r, g, b = (rgb.float() * 255).unbind(1)
    rg, yb = (r - g).abs().flatten(1), (0.5 * (r + g) - b).abs().flatten(1)
    sigma = (rg.var(1, unbiased=False) + yb.var(1, unbiased=False)).sqrt()
    mu = (rg.mean(1) ** 2 + yb.mean(1) ** 2).sqrt()
    return sigma + 0.3 * mu


class RGBMetric(Metric):
    """A per-image metric of the RGB picture that (L, ab) makes, averaged over the validation set.
    `fn(pred_rgb, real_rgb)` or, with `on='pred'`/`'real'`, `fn(rgb)` of one side only."""
    def __init__(self, fn, name: str, on: str = "both"):
        self.fn, self._name, self.on = fn, name, on

    def reset(self): self.total, self.count = 0.0, 0

    def accumulate(self, learn):
        l, ab, pred = learn.xb[0], learn.yb[0], learn.pred
        if self.on == "real":
            vals = self.fn(model_to_rgb(l, ab))
        elif self.on == "pred":
            vals = self.fn(model_to_rgb(l, pred))
        else:
            vals = self.fn(model_to_rgb(l, pred), model_to_rgb(l, ab))
        vals = vals.clamp(max=100.0) if self.fn is psnr else vals  # an exact match would average to inf
        self.total += vals.sum().item()
        self.count += len(vals)

    @property
    def value(self): return self.total / self.count if self.count else None

    @property
    def name(self): return self._name


def psnr_metric() -> RGBMetric: return RGBMetric(psnr, "psnr")
def colorfulness_metric(on: str = "pred") -> RGBMetric:
    return RGBMetric(colorfulness, "colorfulness" if on == "pred" else "colorfulness_real", on=on)
