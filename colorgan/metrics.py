"""Image-quality numbers on RGB in [0,1]: PSNR, colourfulness, and the fastai metrics built on them."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from fastai.learner import Metric

from .color import model_to_rgb, rgb_to_lab, sampled_ab
from .distributed import all_reduce_sum

__all__ = ["psnr", "ssim", "ciede2000", "colorfulness", "false_color", "wrong_hue", "wrong_hue_mask",
           "lightness_drift", "RGBMetric", "psnr_metric", "colorfulness_metric", "false_color_metric",
           "wrong_hue_metric", "tint_floor", "TintGain", "ab_histogram", "floor_of", "FALSE_COLOR_CHROMA", "WRONG_HUE"]

FALSE_COLOR_CHROMA = 20.0  # CIELAB chroma above the original's that counts as colour the photo never had
# wrong_hue's thresholds: the prediction's chroma that counts as clear colour, the original's chroma below which its
# hue is not counted (too dull to have one), and the hue angle in degrees that counts as a different colour
WRONG_HUE = {"chroma": 15.0, "real_chroma": 10.0, "degrees": 60.0}


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


def _chroma(lab: torch.Tensor) -> torch.Tensor:
    "CIELAB chroma, sqrt(a^2 + b^2), of a (N,3,H,W) batch: (N,H,W)."
    return torch.hypot(lab[:, 1].float(), lab[:, 2].float())


def false_color(pred_lab: torch.Tensor, real_lab: torch.Tensor, excess: float = FALSE_COLOR_CHROMA) -> torch.Tensor:
    """Per image of CIELAB batches (N,3,H,W): the share of pixels whose chroma exceeds the original's by more than
    `excess` CIELAB units, i.e. the area painted in colour the photo never had (blotches)."""
    return (_chroma(pred_lab) - _chroma(real_lab) > excess).flatten(1).float().mean(1)


def wrong_hue_mask(pred_lab: torch.Tensor, real_lab: torch.Tensor, chroma: float = WRONG_HUE["chroma"],
                   real_chroma: float = WRONG_HUE["real_chroma"],
                   degrees: float = WRONG_HUE["degrees"]) -> torch.Tensor:
    "(N,H,W): the pixels `wrong_hue` counts (with chroma thresholds of 0, every pixel whose hue differs by more)."
    c1, c2 = _chroma(pred_lab), _chroma(real_lab)
    dot = (pred_lab[:, 1:].float() * real_lab[:, 1:].float()).sum(1)
    cos = dot / (c1 * c2).clamp(min=1e-6)  # cosine of the hue angle between the two
    return (c1 > chroma) & (c2 > real_chroma) & (cos < math.cos(math.radians(degrees)))


def wrong_hue(pred_lab: torch.Tensor, real_lab: torch.Tensor, **thresholds) -> torch.Tensor:
    """Per image of CIELAB batches (N,3,H,W): the share of pixels painted in clear colour (chroma above `chroma`)
    whose hue is more than `degrees` away from the original's, where the original has a hue (chroma above
    `real_chroma`): a red patch on a green leaf or a yellow stone. `false_color` misses these when the original is
    about as saturated as the patch. `thresholds` default to WRONG_HUE (`wrong_hue_mask`)."""
    return wrong_hue_mask(pred_lab, real_lab, **thresholds).flatten(1).float().mean(1)


def lightness_drift(pred_lab: torch.Tensor, real_lab: torch.Tensor) -> torch.Tensor:
    "Per image of CIELAB batches: the mean |L(pred) - L(real)|, how far the output strayed from the photo's lightness."
    return (pred_lab[:, 0].float() - real_lab[:, 0].float()).abs().flatten(1).mean(1)


class _BatchColours:
    """The RGB (and CIELAB) pictures of the batch the metrics are reading, made once for all of them: a validation
    batch's prediction and target are converted once each (the gamut mapping is the costly step), whatever the
    number of metrics. Keyed by the tensors themselves (held, so no other batch can take their ids); dropped once a
    metric's value is read, after the last batch."""
    key: tuple | None = None
    made: dict = {}

    @classmethod
    def get(cls, learn, side: str, space: str) -> torch.Tensor:
        key = (learn.xb[0], learn.pred, learn.yb[0])
        if cls.key is None or any(a is not b for a, b in zip(cls.key, key)):
            cls.key, cls.made = key, {}
        if (side, "rgb") not in cls.made:  # NaN (diverged weights) reads as gray: the loss, not the colour maths,
            ab = torch.nan_to_num(key[1] if side == "pred" else key[2], nan=0.0)  # says so (StopOnNaN)
            cls.made[side, "rgb"] = model_to_rgb(key[0], ab)
        if space == "lab" and (side, "lab") not in cls.made:
            cls.made[side, "lab"] = rgb_to_lab(cls.made[side, "rgb"])
        return cls.made[side, space]

    @classmethod
    def clear(cls): cls.key, cls.made = None, {}


class RGBMetric(Metric):
    """A per-image metric of the RGB picture that (L, ab) makes, averaged over the validation set.
    `fn(pred, real)` or, with `on='pred'`/`'real'`, `fn(picture)` of one side only; the pictures are RGB in [0,1],
    or CIELAB with `space='lab'`, made once a batch for all the metrics (`_BatchColours`)."""
    def __init__(self, fn, name: str, on: str = "both", space: str = "rgb"):
        self.fn, self._name, self.on, self.space = fn, name, on, space

    def reset(self): self.total, self.count = 0.0, 0

    def accumulate(self, learn):
        if self.on in ("real", "pred"):
            vals = self.fn(_BatchColours.get(learn, self.on, self.space))
        else:
            vals = self.fn(_BatchColours.get(learn, "pred", self.space), _BatchColours.get(learn, "real", self.space))
        vals = vals.clamp(max=100.0) if self.fn is psnr else vals  # an exact match would average to inf
        self.total = self.total + vals.sum()  # stays on the device: no host sync per batch
        self.count += len(vals)

    @property
    def value(self):
        "The mean over every rank's images."
        _BatchColours.clear()
        count = all_reduce_sum(float(self.count))
        return (all_reduce_sum(self.total) / count).item() if count else None

    @property
    def name(self): return self._name


def psnr_metric() -> RGBMetric: return RGBMetric(psnr, "psnr")
def colorfulness_metric(on: str = "pred") -> RGBMetric:
    return RGBMetric(colorfulness, "colorfulness" if on == "pred" else "colorfulness_real", on=on)


def false_color_metric() -> RGBMetric:
    "The validation photos' false-colour area (see `false_color`), on the RGB the predictions make."
    return RGBMetric(false_color, "false_color", space="lab")


def wrong_hue_metric() -> RGBMetric:
    "The validation photos' wrong-hue area (see `wrong_hue`), on the RGB the predictions make."
    return RGBMetric(wrong_hue, "wrong_hue", space="lab")


TINT_BINS = 2201  # histogram bins of the scaled ab over [-1, 1]: 0.1 CIELAB units each


def ab_histogram(ab: torch.Tensor) -> torch.Tensor:
    "(2, TINT_BINS) counts of the model's scaled a and b values in a batch (N,2,H,W)."
    return torch.stack([torch.histc(ab[:, i].float(), TINT_BINS, -1, 1) for i in range(2)])


def floor_of(hist: torch.Tensor) -> float:
    """The L1 (mean over a, b and pixels) of the best single colour for every pixel of an `ab_histogram`: the
    median a and b, to the histogram's resolution."""
    centres = torch.linspace(-1, 1, TINT_BINS, device=hist.device, dtype=torch.float64)
    hist = hist.double()
    cum = hist.cumsum(1)
    median = centres[(cum < cum[:, -1:] / 2).sum(1).clamp(max=TINT_BINS - 1)]
    return ((centres - median[:, None]).abs() * hist).sum(1).div(hist.sum(1)).mean().item()


def tint_floor(photos, max_pixels: int = 2_000_000) -> float:
    """`floor_of` uint8 photos (N,S,S,3): the L1 of painting all of them their median tint. A generator no better
    than this paints one tint whatever it sees."""
    return floor_of(sum(ab_histogram(ab) for ab in sampled_ab(photos, max_pixels)))


class TintGain(RGBMetric):
    """How much better than one tint: 1 - (the predictions' mean L1 on ab) / (the L1 of the validation photos'
    median tint for all of them, `floor_of`, from the same batches). About 0 for a generator that has learned only
    the photos' common tint: stage two then saturates that tint into patches of the wrong colour (docs/gan.md);
    1 for a perfect one."""
    def __init__(self):
        super().__init__(None, "tint_gain")

    def reset(self):
        super().reset()
        self.hist = 0.0

    def accumulate(self, learn):
        pred, target = learn.pred.float(), learn.yb[0].float()
        self.hist = self.hist + ab_histogram(target)
        self.total = self.total + (pred - target).abs().flatten(1).mean(1).sum()
        self.count += len(target)

    @property
    def value(self):
        count = all_reduce_sum(float(self.count))
        if not count:
            return None
        return 1 - (all_reduce_sum(self.total) / count).item() / floor_of(all_reduce_sum(self.hist))


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # scipy's gaussian_filter, as skimage's SSIM uses it
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM of (N,C,H,W) batches, averaged over channels, as Wang et al. define it and as
    `skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=data_range, channel_axis=...)` computes it (borders excluded)."""
    x, y = pred.double(), target.double()
    g = _gaussian_window().to(x.device)
    n, c = x.shape[:2]

    def blur(t):  # separable Gaussian over the valid region, every channel apart
        t = t.reshape(n * c, 1, *t.shape[-2:])
        t = F.conv2d(t, g.view(1, 1, -1, 1))
        return F.conv2d(t, g.view(1, 1, 1, -1))
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.reshape(n, -1).mean(1).float()


def ciede2000(lab1: torch.Tensor, lab2: torch.Tensor) -> torch.Tensor:
    "CIEDE2000 colour difference per pixel of CIELAB batches (N,3,H,W) -> (N,H,W), kL = kC = kH = 1."
    l1, a1, b1 = lab1.double().unbind(1)
    l2, a2, b2 = lab2.double().unbind(1)
    c_bar = (torch.hypot(a1, b1) + torch.hypot(a2, b2)) / 2
    g = 0.5 * (1 - torch.sqrt(c_bar ** 7 / (c_bar ** 7 + 25.0 ** 7)))
    a1p, a2p = a1 * (1 + g), a2 * (1 + g)
    c1p, c2p = torch.hypot(a1p, b1), torch.hypot(a2p, b2)
    h1p, h2p = torch.atan2(b1, a1p) % (2 * math.pi), torch.atan2(b2, a2p) % (2 * math.pi)
    dl, dc = l2 - l1, c2p - c1p
    dh = h2p - h1p
    dh = torch.where(dh > math.pi, dh - 2 * math.pi, torch.where(dh < -math.pi, dh + 2 * math.pi, dh))
    dh = torch.where(c1p * c2p == 0, torch.zeros_like(dh), dh)
    dH = 2 * torch.sqrt(c1p * c2p) * torch.sin(dh / 2)
    l_bar, cp_bar = (l1 + l2) / 2, (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_bar = torch.where(c1p * c2p == 0, h_sum,
                        torch.where((h1p - h2p).abs() <= math.pi, h_sum / 2,
                                    torch.where(h_sum < 2 * math.pi, h_sum / 2 + math.pi, h_sum / 2 - math.pi)))
    t = (1 - 0.17 * torch.cos(h_bar - math.radians(30)) + 0.24 * torch.cos(2 * h_bar)
         + 0.32 * torch.cos(3 * h_bar + math.radians(6)) - 0.20 * torch.cos(4 * h_bar - math.radians(63)))
    d_theta = math.radians(30) * torch.exp(-(((torch.rad2deg(h_bar) - 275) / 25) ** 2))
    r_c = 2 * torch.sqrt(cp_bar ** 7 / (cp_bar ** 7 + 25.0 ** 7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / torch.sqrt(20 + (l_bar - 50) ** 2)
    s_c, s_h = 1 + 0.045 * cp_bar, 1 + 0.015 * cp_bar * t
    r_t = -torch.sin(2 * d_theta) * r_c
    de = torch.sqrt((dl / s_l) ** 2 + (dc / s_c) ** 2 + (dH / s_h) ** 2 + r_t * (dc / s_c) * (dH / s_h))
    return de.float()
