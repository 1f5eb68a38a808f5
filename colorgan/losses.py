"""The generator's colour loss (L1 on ab, plain or rebalanced by how rare each colour is) and the adversarial
criteria on a PatchGAN's logit map: vanilla (pix2pix's BCE), LSGAN and hinge."""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .color import AB_SCALE, denorm_ab, norm_ab, sampled_ab

__all__ = ["ADV_LOSSES", "critic_loss", "generator_loss", "AB_BIN", "ab_bins", "ab_cell_centres", "colour_prior",
           "rebalance_weights", "RebalancedL1", "ColourClassLoss"]

ADV_LOSSES = ("vanilla", "lsgan", "hinge")


def critic_loss(kind: str, logits: torch.Tensor, real: bool, smoothing: float = 0.0) -> torch.Tensor:
    "The critic's loss on patches that are all real or all fake; `smoothing` lowers the real target (one-sided)."
    logits = logits.float()
    if kind == "hinge":
        return F.relu(1 - logits).mean() if real else F.relu(1 + logits).mean()
    target = torch.full_like(logits, 1.0 - smoothing if real else 0.0)
    if kind == "lsgan":
        return F.mse_loss(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


def generator_loss(kind: str, logits: torch.Tensor) -> torch.Tensor:
    "The generator's adversarial loss: how far the critic is from calling its fakes real."
    logits = logits.float()
    if kind == "hinge":
        return -logits.mean()
    if kind == "lsgan":
        return F.mse_loss(logits, torch.ones_like(logits))
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


AB_BIN = 10.0  # CIELAB units a side of one cell of the ab plane (Zhang et al.'s quantisation)
AB_SIDE = math.ceil(2 * AB_SCALE / AB_BIN)  # cells along a and along b


def ab_bins(ab: torch.Tensor) -> torch.Tensor:
    "The model's scaled ab (N,2,H,W) -> the (N,H,W) index of each pixel's cell of the ab plane, in [0, AB_SIDE**2)."
    cell = ((denorm_ab(ab.float()) + AB_SCALE) / AB_BIN).long().clamp(0, AB_SIDE - 1)
    return cell[:, 0] * AB_SIDE + cell[:, 1]


def ab_cell_centres() -> torch.Tensor:
    "(AB_SIDE**2, 2): the centre of each cell of the ab plane in the model's scaled ab units, in `ab_bins`' order."
    centre = norm_ab((torch.arange(AB_SIDE, dtype=torch.float32) + 0.5) * AB_BIN - AB_SCALE)
    a, b = torch.meshgrid(centre, centre, indexing="ij")
    return torch.stack([a.flatten(), b.flatten()], 1)


def colour_prior(photos, max_pixels: int = 2_000_000, chunk: int = 256, sigma: float = 5.0) -> torch.Tensor:
    """How often each cell of the ab plane occurs in uint8 photos (N,S,S,3) (an array or the training cache):
    (AB_SIDE**2,) shares summing to 1, smoothed by a Gaussian of `sigma` CIELAB units as Zhang et al. smooth theirs.
    Reads every photo, every k-th pixel of each so that about `max_pixels` are counted."""
    counts = torch.zeros(AB_SIDE * AB_SIDE, dtype=torch.float64)
    for ab in sampled_ab(photos, max_pixels, chunk):
        counts += torch.bincount(ab_bins(ab).flatten(), minlength=AB_SIDE * AB_SIDE).double()
    radius = max(1, math.ceil(3 * sigma / AB_BIN))
    kernel = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) * AB_BIN / sigma) ** 2)
    grid = counts.view(1, 1, AB_SIDE, AB_SIDE)
    grid = F.conv2d(grid, (kernel[:, None] * kernel[None]).view(1, 1, 2 * radius + 1, -1), padding=radius)
    return (grid / grid.sum()).flatten().float()


def rebalance_weights(prior: torch.Tensor, strength: float) -> torch.Tensor:
    """Zhang et al.'s class rebalancing (their lambda is 1 - `strength`): the weight of a colour cell is
    1 / (`strength` * prior + (1 - `strength`) / Q), Q the cells that occur, scaled so the photos' mean weight is 1.
    0 weighs every colour alike (plain L1); the nearer 1, the more rare colours weigh."""
    if not 0 <= strength < 1:
        raise ValueError(f"rebalance strength must be in [0, 1), not {strength}")
    q = int((prior > 0).sum().clamp(min=1))
    weights = 1 / (strength * prior + (1 - strength) / q)
    return weights / (prior * weights).sum()


class RebalancedL1(nn.Module):
    """L1 on the model's ab with each pixel weighted by how rare its real colour is among the training photos
    (`rebalance_weights` of `colour_prior`): Zhang et al.'s remedy for the brownish average that plain L1 learns
    where a colour is uncertain, used by them on a body that knows objects (not measured here); from scratch on a
    few thousand photos it only moved the one tint (docs/gan.md, round four). The mean weight over the training
    photos is 1, so the loss reads like L1."""
    def __init__(self, prior: torch.Tensor, strength: float = 0.5):
        super().__init__()
        self.strength = strength
        self.register_buffer("weights", rebalance_weights(prior, strength))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = self.weights.to(target.device)[ab_bins(target)].unsqueeze(1)
        return (w * (pred.float() - target.float()).abs()).mean()


class ColourClassLoss(nn.Module):
    """Zhang et al.'s loss for a generator with a class head (`build_generator(head="classes")`): cross-entropy of
    the head's logits over the cells of the ab plane against each pixel's real cell (the real ab averaged over the
    area of one logit first), optionally weighted towards rare cells (`weights`, `rebalance_weights`). Unlike L1,
    which pulls an uncertain pixel to the median colour, it learns every colour a pixel may have; the head's
    annealed mean reads one colour out. `pred` (the read-out ab) is not used: the loss reads the logits of the
    forward pass before it through a fastai `Hook` on the head that it owns, registered only while `hooked()` is
    open (a Learner opens it for each fit: `colorgan.learner.HookedLoss`), so no batch outlives its loss."""
    def __init__(self, head: nn.Module, weights: torch.Tensor | None = None):
        super().__init__()
        self.heads = [head]  # a plain list: the loss must not own (and so move or save) the generator's module
        self.register_buffer("weights", weights)
        self.hook = None

    def hook_head(self) -> None:
        "From now until `unhook`, every forward pass of the head leaves its logits for the next call of this loss."
        from fastai.callback.hook import Hook
        self.unhook()
        self.hook = Hook(self.heads[0], lambda module, inputs, output: inputs[0], detach=False)

    @contextmanager
    def hooked(self):
        "`hook_head` while the block runs, `unhook` after it."
        self.hook_head()
        try:
            yield self
        finally:
            self.unhook()

    def unhook(self) -> None:
        "Remove the hook and what it holds (a fit that died left it registered)."
        if self.hook is not None:
            self.hook.remove()
            self.hook.stored, self.hook = None, None

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = None if self.hook is None else self.hook.stored
        if logits is None:
            raise RuntimeError("ColourClassLoss reads the logits of the forward pass before it: call it inside a "
                               "Learner's fit, or inside `with loss.hooked():` after running the generator")
        self.hook.stored = None  # the batch's graph goes with its loss
        if target.shape[-2:] != logits.shape[-2:]:
            target = F.adaptive_avg_pool2d(target.float(), logits.shape[-2:])
        weights = None if self.weights is None else self.weights.to(logits.device)
        return F.cross_entropy(logits.float(), ab_bins(target), weight=weights)
