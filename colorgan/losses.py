"""Adversarial criteria on a PatchGAN's logit map: vanilla (pix2pix's BCE), LSGAN and hinge."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ADV_LOSSES", "critic_loss", "generator_loss"]

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
