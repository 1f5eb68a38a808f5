"""Learners a Python user can keep using: `lr_find`, `fit_one_cycle`, `show_results`, `export` all work."""
from __future__ import annotations

from functools import partial

import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle / lr_find)
import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.callback.schedule import ParamScheduler
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import L1LossFlat
from fastcore.meta import delegates
from fastai.optimizer import OptimWrapper
from fastcore.foundation import L

from .budget import BudgetClock, clock, fit_to_budget
from .callbacks import probing
from .device import DevicePolicy, resolve_policy
from .distributed import is_distributed
from .features import FrozenFeatures
from .losses import ColourClassLoss, RebalancedL1, colour_prior, rebalance_weights
from .metrics import TintGain, colorfulness_metric, false_color_metric, psnr_metric, wrong_hue_metric
from .models import body_head_split, build_generator, class_head

__all__ = ["pretrain_learner", "fit_pretrain", "FreezeBody", "AdamW", "DeviceMixedPrecision", "UsePolicy", "HookedLoss",
           "compile_model", "adamw"]


class AdamW(torch.optim.AdamW):
    """torch's AdamW (one fused kernel for all parameters where `fused=True`) with fastai's convention: decoupled
    weight decay for weights only, never for biases and normalisation weights (every tensor of one dimension)."""
    @torch.no_grad()
    def step(self, closure=None):
        wds = [g["weight_decay"] for g in self.param_groups]
        for g, wd in zip(self.param_groups, wds):
            decayed = [p for p in g["params"] if p.grad is not None and p.ndim > 1]
            if wd and decayed:
                torch._foreach_mul_(decayed, 1 - g["lr"] * wd)
            g["weight_decay"] = 0.0
        try:
            return super().step(closure)
        finally:
            for g, wd in zip(self.param_groups, wds):
                g["weight_decay"] = wd


def adamw(fused: bool):
    """The optimizer of both stages on every device: AdamW with fastai Adam's hyperparameters (eps 1e-5, second
    moment 0.99; fastai's schedulers set the learning rate, first moment and weight decay), wrapped so fastai's
    schedulers, freezing and discriminative learning rates drive it. `fused` picks the kernel, not the maths."""
    return partial(OptimWrapper, opt=partial(AdamW, eps=1e-5, betas=(0.9, 0.99), fused=fused or None))


class DeviceMixedPrecision(MixedPrecision):
    """fastai's MixedPrecision, on the data's device (fastai's own is CUDA-only: CPU autocast runs bf16 and fp16
    too), with the loss scale kept across fits and saved in checkpoints, so a resumed run does not restart at
    65536 and skip its first steps."""
    def __init__(self, amp_mode: AMPMode, device_type: str):
        super().__init__(amp_mode)
        self.device_type, self.scaler_state = device_type, None

    @property
    def name(self) -> str: return "mixed_precision"  # the name fastai's load_learner(cpu=True) looks for to strip it

    def before_fit(self):
        dtype = torch.bfloat16 if self.amp_mode == AMPMode.BF16 else torch.float16
        self.autocast = torch.autocast(self.device_type, dtype=dtype)
        self.learn.scaler = torch.amp.GradScaler(self.device_type, enabled=dtype == torch.float16)
        if self.scaler_state:
            self.learn.scaler.load_state_dict(self.scaler_state)
        self.scales = L()

    def after_fit(self):
        if not probing(self.learn):  # lr_find's divergent steps say nothing about the real scale
            self.scaler_state = self.learn.scaler.state_dict()
        super().after_fit()

    def checkpoint_state(self) -> dict:
        """May be called at any time (the checkpoint-state protocol): inside a fit the live scaler's state, before
        the first fit or after one (fastai sets `learn.scaler` to None) the state kept from the last fit."""
        scaler = getattr(self.learn, "scaler", None)  # Learner's GetAttr falls through to the model: no attribute
        return {"scaler": scaler.state_dict() if scaler is not None else self.scaler_state}

    def load_checkpoint_state(self, state: dict): self.scaler_state = state.get("scaler") or None


class HookedLoss(Callback):
    """For each fit (and fastai's validate, get_preds and predict, which open one too), the class head's hook that
    `ColourClassLoss` reads its logits through: registered in `before_fit`, removed with what it holds in
    `after_fit`, so no batch's logits or graph outlive the fit."""
    order = -20

    def before_fit(self):
        if isinstance(self.learn.loss_func, ColourClassLoss):
            self.learn.loss_func.hook_head()

    def after_fit(self):
        if isinstance(self.learn.loss_func, ColourClassLoss):
            self.learn.loss_func.unhook()


class UsePolicy(Callback):
    "During a fit: channels_last for the model where the policy says so, and cuDNN's autotuner on GPUs."
    order = -10

    def before_fit(self):
        self.benchmark = torch.backends.cudnn.benchmark
        if self.learn.policy.device_type == "cuda":
            torch.backends.cudnn.benchmark = True
        if self.learn.policy.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def after_fit(self): torch.backends.cudnn.benchmark = self.benchmark


def compile_model(model: torch.nn.Module, compile: bool | str = True) -> torch.nn.Module:
    """torch.compile in place (the module keeps its type, so splitters, saving and indexing still work); a string
    names the backend ('inductor', the default for True; 'eager' or 'aot_eager' to check a graph quickly)."""
    model.compile(backend=compile if isinstance(compile, str) else "inductor")
    return model


def apply_policy(learn: Learner, policy: DevicePolicy) -> Learner:
    "Record the policy on the Learner, where every callback reads it, and add what it asks for."
    learn.policy = policy
    learn.add_cb(UsePolicy())
    if policy.amp_dtype is not None:
        learn.add_cb(DeviceMixedPrecision(AMPMode(policy.precision), policy.device_type))
    return learn


def colour_loss(dls: DataLoaders, rebalance: float = 0.0, head: torch.nn.Module | None = None) -> torch.nn.Module:
    """The loss on ab: plain L1, or with `rebalance` above 0 L1 weighted by how rare each real colour is among
    `dls`' training photos (`colorgan.losses.RebalancedL1`; Zhang et al. use 0.5). With a class `head` (stage one
    of a `head="classes"` generator), Zhang et al.'s cross-entropy over the ab cells, rebalanced the same way."""
    prior = colour_prior(dls.train.dataset) if rebalance else None
    if head is not None:
        return ColourClassLoss(head, rebalance_weights(prior, rebalance) if rebalance else None)
    return RebalancedL1(prior, rebalance) if rebalance else L1LossFlat()


def pretrain_learner(dls: DataLoaders, model: torch.nn.Module | None = None, wd: float = 1e-4,
                     precision: str = "auto", fused_adam: bool | str = "auto", channels_last: bool | str = "auto",
                     compile: bool | str = False, rebalance: float = 0.0, loss: str = "auto",
                     feature_views: int = 0, path: str = ".", cbs=None, metrics=(), **generator_kwargs) -> Learner:
    """Stage one: the generator (built from `generator_kwargs` by `build_generator` unless `model` is given) on L1
    of ab, or (`loss` auto with a class head, or "classes") cross-entropy over the ab cells, weighted towards rare
    colours by `rebalance` (`colour_loss`; "l1" forces L1: stage two's term), with PSNR of the RGB result, the
    colourfulness of predictions and real photos, the false-colour and wrong-hue areas and how much better than
    one tint it colours (`TintGain`) as metrics, and an encoder/decoder splitter so `freeze()` and discriminative
    learning rates work.
    The device policy (`colorgan.device.resolve_policy` on the data's device) sets `precision` (auto: bf16 or fp16
    on GPUs; on a CPU bf16 where it has bf16 units, else fp32), the AdamW kernel (`fused_adam`), `channels_last`
    and `compile` (True or a torch.compile backend's name); `learn.policy` says what it decided. `metrics` come
    first in the table, before these six. `feature_views` above 0 trains the decoder on the frozen body's features
    of that many stored views of each training photo, computed once (`colorgan.features.FrozenFeatures`; the body
    stays frozen for every fit)."""
    policy = resolve_policy(dls.device, precision, fused_adam, channels_last, compile)
    if model is None:
        model = build_generator(img_size=dls.train.size, **generator_kwargs)
    head = class_head(model) if loss in ("auto", "classes") else None
    if loss == "classes" and head is None:
        raise ValueError("loss 'classes' needs a generator with a class head (build_generator(head='classes'))")
    learn = Learner(dls, compile_model(model, compile) if compile else model,
                    loss_func=colour_loss(dls, rebalance, head), opt_func=adamw(policy.fused_adam), wd=wd, splitter=body_head_split,
                    metrics=[*metrics, psnr_metric(), colorfulness_metric(), colorfulness_metric("real"),
                             false_color_metric(), wrong_hue_metric(), TintGain()],
                    path=path, cbs=[*(cbs or []), *([FrozenFeatures(feature_views)] if feature_views else []),
                                    *([HookedLoss()] if head is not None else [])])
    return apply_policy(learn, policy)


class FreezeBody(Callback):
    """fastai's transfer schedule inside one fit, so that `--minutes` sizes it like any other: the body (parameter
    group 0, the pretrained encoder) frozen for the first `pct` of the training batches (1: all of them), trained
    after that. Frozen means every body parameter, BatchNorm's affine ones too (fastai's `freeze` keeps those
    training, which makes the backward pass run through the whole encoder): the backward pass stops at the
    decoder, about half the cost of a step on CPU (docs/gan.md, round five). BatchNorm's statistics still follow
    the batches. Adam's state is kept across the switch. Under DDP, whose gradient buckets are fixed when it wraps
    the model, the body's learning rate is held at 0 instead."""
    order = ParamScheduler.order + 1  # after the schedule has set this batch's learning rates

    def __init__(self, pct: float): self.pct, self.frozen = pct, False

    def before_fit(self): self.by_lr = is_distributed()
    def before_batch(self):
        if not self.training or probing(self.learn):
            return
        frozen = self.pct_train < self.pct
        if frozen != self.frozen and not self.by_lr:
            self._body(trainable=not frozen)
        self.frozen = frozen
        if frozen and self.by_lr:
            self.learn.opt.opt.param_groups[0]["lr"] = 0.0

    def after_fit(self):
        if self.frozen and not self.by_lr:
            self._body(trainable=True)
        self.frozen = False

    def _body(self, trainable: bool):
        for p in self.learn.opt.param_lists[0]:
            p.requires_grad_(trainable)


@delegates(Learner.fit_one_cycle, but=["wd"])
def fit_pretrain(learn: Learner, n_epoch: int | None = None, minutes: float | None = None, freeze_pct: float = 0.0,
                 lr_mult: float = 1.0, lr_max=None, cbs=None, **kwargs):
    """Either stage's schedule: fastai's fit_one_cycle over `n_epoch` epochs, or sized to `minutes` of wall clock
    (colorgan.budget: a few timed batches, then as many epochs as fit, `learn.dls.train.epoch_batches` set to their
    length). The learning rate, momentum and weight decay default to the Learner's: stage two's Learner carries
    its own (`gan_learner`). fastai's transfer schedule, as fractions of whatever length that is: the body frozen
    for the first `freeze_pct` of the batches (`FreezeBody`), and discriminative learning rates, the body's
    `lr_max / lr_mult` (fastai's fine_tune uses 100) and the decoder's `lr_max`. (`colorgan.train` plans a recipe's
    budget itself, to record it, and calls this with `n_epoch`.)"""
    cbs = [*(cbs or []), *([FreezeBody(freeze_pct)] if freeze_pct else [])]
    if minutes is not None:
        if n_epoch is not None:
            raise ValueError(f"give n_epoch ({n_epoch}) or minutes ({minutes:g}), not both")
        plan = fit_to_budget(learn, minutes, clock(), freeze_pct)
        n_epoch, cbs = plan.n_epoch, [*cbs, BudgetClock(plan)]
    if lr_mult != 1 and not isinstance(lr_max, (list, tuple, slice)):
        top = learn.lr if lr_max is None else lr_max
        lr_max = slice(top / lr_mult, top)
    return learn.fit_one_cycle(n_epoch, lr_max=lr_max, cbs=cbs, **kwargs)
