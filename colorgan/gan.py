"""Stage two: a fastai Callback that turns the stage-one Learner into a conditional GAN.

The Learner's model stays the generator and its loss the L1 term, so `valid_loss` stays comparable across stages
and `predict`, `save` and `export` work unchanged. The callback owns the critic and the critic's *own* optimizer
(fastai's GANLearner shares one optimizer between both nets, and its critic never sees the L input).
"""
from __future__ import annotations

import copy
from functools import partial

import torch
from fastai.callback.core import CancelBatchException, Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.learner import Learner
from fastai.metrics import ValueMetric
from fastcore.meta import delegates
from torch import nn

from .artifacts import _unwrap
from .callbacks import GeneratorEMA, probing
from .distributed import all_reduce_sum, no_sync, sync_buffers, wrap_ddp
from .learner import compile_model, pretrain_learner
from .losses import ADV_LOSSES, critic_loss, generator_loss
from .models import build_critic

__all__ = ["ConditionalGAN", "gan_learner", "GAN_LOG", "GAN_LR", "GAN_MOMS"]

GAN_LOG = ("loss_D_real", "loss_D_fake", "loss_G_GAN", "loss_G_L1")
# Stage two's generator schedule, on its Learner so that every fastai fit method uses it: pix2pix's learning rate,
# and Adam's first moment held at 0.5 as pix2pix keeps it (fit_one_cycle's default cycles it between 0.95 and
# 0.85, tuned for supervised training). The critic's Adam has its own betas (`ConditionalGAN.betas`).
GAN_LR, GAN_MOMS = 2e-4, (0.5, 0.5, 0.5)


class ConditionalGAN(Callback):
    """Each training batch: the generator's loss becomes `lambda_l1` * L1 + adversarial term for critic(L, pred);
    after the generator's step the critic steps on (L, pred.detach()) against (L, ab) with its own optimizer.
    `warmup` batches train the critic alone first (they hold the generator's one-cycle schedule where it is and are
    left out of its training loss); the critic steps `critic_steps` times every `critic_every`
    batches; `label_smoothing` lowers the real target; `adv_loss` is 'vanilla' (pix2pix), 'lsgan' or 'hinge'."""
    order = MixedPrecision.order + 1  # after (Device)MixedPrecision has closed the generator's autocast

    def __init__(self, critic: nn.Module | None = None, adv_loss: str = "vanilla", lambda_l1: float = 100.0,
                 critic_lr: float = 2e-4, betas: tuple = (0.5, 0.999), warmup: int = 0, critic_steps: int = 1,
                 critic_every: int = 1, label_smoothing: float = 0.0):
        if adv_loss not in ADV_LOSSES:
            raise ValueError(f"adv_loss must be one of {', '.join(ADV_LOSSES)}, not '{adv_loss}'")
        self.critic = critic if critic is not None else build_critic()
        self.adv_loss, self.lambda_l1, self.critic_lr, self.betas = adv_loss, lambda_l1, critic_lr, tuple(betas)
        self.warmup, self.critic_steps, self.critic_every = warmup, critic_steps, critic_every
        self.label_smoothing, self.critic_opt, self.critic_scaler, self.n_batches = label_smoothing, None, None, 0
        self.warming = False  # this batch trains the critic alone
        self.sums = dict.fromkeys(GAN_LOG, 0.0)
        self.counts = dict.fromkeys(GAN_LOG, 0)

    # -- fastai events ---------------------------------------------------------------------------------------
    def before_fit(self):
        if hasattr(self.learn, "gather_preds"):  # predict, get_preds: nothing to do with the critic
            self.run = False
            return
        self._setup()
        self.critic.requires_grad_(True)  # a fit that died between the generator's loss and its backward froze it
        self.probing = probing(self.learn)  # lr_find and the budget's timing must leave the critic as they found it
        self._saved = copy.deepcopy(self.checkpoint_state()) if self.probing else None

    def after_fit(self):
        self.critic = _unwrap(self.critic)
        if self._saved is not None:
            self.load_checkpoint_state(self._saved)
            self._saved = None
    def before_train(self): self.sums, self.counts = dict.fromkeys(GAN_LOG, 0.0), dict.fromkeys(GAN_LOG, 0)
    def after_loss(self):
        if self.training: self._generator_loss()
    def after_backward(self): self.critic.requires_grad_(True)  # frozen only while the generator's loss flows back
    def after_step(self): self._maybe_critic_step()
    def after_cancel_batch(self):
        self.critic.requires_grad_(True)  # a batch cancelled between the generator's loss and its backward
        if self.warming:  # the generator did not step: its loss is not the epoch's (the Recorder skips a batch
            self.learn.yb = ()  # without targets)

    def after_batch(self):
        "A warm-up batch counts for the critic only: the one-cycle schedule (TrainEvalCallback, order -10) waits."
        if not self.training:
            return
        self.n_batches += 1
        if self.warming:
            self.learn.pct_train -= 1 / (self.n_iter * self.n_epoch)
            self.learn.train_iter -= 1
            self.warming = False

    # -- the two nets' losses --------------------------------------------------------------------------------
    def _setup(self):
        """The critic on the device policy's device and layout, with its own Adam (fused where the policy says) and
        loss scaler, both made once and kept across fits."""
        policy = self.learn.policy
        fmt = torch.channels_last if policy.channels_last else torch.preserve_format
        device = self.learn.dls.device or policy.device  # the data's: a Learner loaded with cpu=True trains there
        self.critic = wrap_ddp(self.critic.to(device, memory_format=fmt))
        if self.critic_opt is None:
            self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=self.critic_lr, betas=self.betas,
                                               fused=policy.fused_adam or None)
        self.device_type = torch.device(device).type
        self.amp_dtype = policy.amp_dtype if self.device_type == policy.device_type else None
        if self.critic_scaler is None:
            self.critic_scaler = torch.amp.GradScaler(self.device_type, enabled=self.amp_dtype == torch.float16)

    def _autocast(self):
        dtype = self.amp_dtype or torch.float32
        return torch.autocast(self.device_type, dtype=dtype, enabled=self.amp_dtype is not None)

    def _judge(self, ab: torch.Tensor, critic: nn.Module) -> torch.Tensor:
        "The critic's patch logits for (L, ab): it always sees the condition."
        with self._autocast():
            return critic(torch.cat([self.xb[0], ab], 1))

    def _generator_loss(self):
        self._log("loss_G_L1", self.loss)
        if self.n_batches < self.warmup and not self.probing:  # critic alone: the generator is left untouched
            self._critic_step()
            self.warming = True
            raise CancelBatchException()
        self.critic.requires_grad_(False)
        adv = generator_loss(self.adv_loss, self._judge(self.pred, _unwrap(self.critic)))  # no DDP sync: D is fixed
        self._log("loss_G_GAN", adv)
        self.learn.loss_grad = self.lambda_l1 * self.loss_grad + adv

    def _maybe_critic_step(self):
        if (self.n_batches - self.warmup) % self.critic_every == 0:
            for _ in range(self.critic_steps):
                self._critic_step()

    def _critic_step(self):
        "One step on (real + fake) / 2; real and fake pass the critic apart (as pix2pix), reduced across ranks once."
        with no_sync(self.critic):
            real = critic_loss(self.adv_loss, self._judge(self.yb[0], self.critic), True, self.label_smoothing)
            self.critic_scaler.scale(real / 2).backward()
        fake = critic_loss(self.adv_loss, self._judge(self.pred.detach(), self.critic), False)
        self.critic_scaler.scale(fake / 2).backward()
        self.critic_scaler.step(self.critic_opt)
        self.critic_scaler.update()
        self.critic_opt.zero_grad(set_to_none=True)
        sync_buffers(self.critic)
        self._log("loss_D_real", real)
        self._log("loss_D_fake", fake)

    # -- logging and checkpoints -----------------------------------------------------------------------------
    def _log(self, name: str, value: torch.Tensor):
        self.sums[name] += value.detach().float()  # summed on the device: no host sync per batch
        self.counts[name] += 1

    def epoch_mean(self, name: str):
        "The mean of a training loss over the last epoch, over every rank."
        count = all_reduce_sum(float(self.counts[name]))
        return (all_reduce_sum(self.sums[name]) / count).item() if count else None

    def metrics(self) -> list[ValueMetric]:
        "One column per loss of GAN_LOG: its mean over the last training epoch (fastai's ValueMetric)."
        return [ValueMetric(partial(self.epoch_mean, name), name) for name in GAN_LOG]

    def __getstate__(self) -> dict:
        """Pickled (fastai's `export`, for inference) with the critic's weights but not its optimizer or loss scaler,
        which a later fit makes afresh: an exported stage-two Learner is about the size of stage one's."""
        return {**self.__dict__, "critic": _unwrap(self.critic), "critic_opt": None, "critic_scaler": None,
                "_saved": None}

    def checkpoint_state(self) -> dict:
        "Any time: before the first fit the critic has no optimizer or loss scaler yet (None)."
        saved = lambda x: x.state_dict() if x is not None else None  # noqa: E731
        return {"critic": _unwrap(self.critic).state_dict(), "critic_opt": saved(self.critic_opt),
                "critic_scaler": saved(self.critic_scaler), "gan_batches": self.n_batches}

    def load_checkpoint_state(self, state: dict):
        "A state saved before the critic had an optimizer (the budget's timing, say) gives it a fresh one."
        if not state.get("critic_opt"):
            self.critic_opt, self.critic_scaler = None, None
        self._setup()
        _unwrap(self.critic).load_state_dict(state["critic"])
        if state.get("critic_opt"):
            self.critic_opt.load_state_dict(state["critic_opt"])
        if state.get("critic_scaler"):
            self.critic_scaler.load_state_dict(state["critic_scaler"])
        self.n_batches = state["gan_batches"]


@delegates(ConditionalGAN.__init__, but=["critic"])
def gan_learner(dls, generator: nn.Module, critic: nn.Module | None = None, wd: float = 1e-4,
                precision: str = "auto", fused_adam: bool | str = "auto", channels_last: bool | str = "auto",
                compile: bool | str = False, freeze_encoder: bool = False, ema_decay: float | None = 0.99,
                rebalance: float = 0.0, path: str = ".", cbs=None, **kwargs) -> Learner:
    """Stage two: the stage-one Learner around `generator` (its loss and metrics: `pretrain_learner`) plus the
    ConditionalGAN callback with `critic` (pix2pix's PatchGAN by default); `kwargs` go to ConditionalGAN. The
    Learner's `lr` and `moms` are stage two's (GAN_LR, GAN_MOMS): `fit_one_cycle`, `fit` and `fine_tune` from
    Python train as `colorgan gan-finetune` does.
    `ema_decay` keeps an exponential moving average of the generator that validation, checkpoints and the result
    use (None: off). `freeze_encoder` keeps the generator's encoder fixed during this stage; `compile` compiles
    both nets; `rebalance` weighs the L1 term towards rare colours (`colour_loss`)."""
    gan = ConditionalGAN(critic, **kwargs)
    learn = pretrain_learner(dls, model=generator, wd=wd, precision=precision, fused_adam=fused_adam,
                             channels_last=channels_last, compile=compile, rebalance=rebalance, loss="l1", path=path,
                             cbs=cbs, metrics=gan.metrics())
    learn.lr, learn.moms = GAN_LR, GAN_MOMS
    if compile:
        compile_model(gan.critic, compile)
    learn.add_cb(gan)
    if ema_decay:
        learn.add_cb(GeneratorEMA(ema_decay))
    if freeze_encoder:
        learn.freeze()
    return learn
