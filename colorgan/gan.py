"""Stage two: a fastai Callback that turns the stage-one Learner into a conditional GAN.

The Learner's model stays the generator and its loss the L1 term, so `valid_loss` stays comparable across stages
and `predict`, `save` and `export` work unchanged. The callback owns the critic and the critic's *own* optimizer
(fastai's GANLearner shares one optimizer between both nets, and its critic never sees the L input).
"""
from __future__ import annotations

import torch
from fastai.callback.core import CancelBatchException, Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.learner import Learner, Metric
from torch import nn

from .artifacts import _unwrap
from .distributed import all_reduce_sum, no_sync, sync_buffers, wrap_ddp
from .learner import compile_model, on_gpu, pretrain_learner
from .losses import ADV_LOSSES, critic_loss, generator_loss
from .models import build_critic

__all__ = ["ConditionalGAN", "gan_learner", "GAN_LOG"]

GAN_LOG = ("loss_D_real", "loss_D_fake", "loss_G_GAN", "loss_G_L1")


class _EpochMean(Metric):
    "A column that shows the mean of one of the callback's training losses over the last training epoch."
    def __init__(self, gan: "ConditionalGAN", name: str): self.gan, self._name = gan, name
    def reset(self): pass
    def accumulate(self, learn): pass
    @property
    def value(self): return self.gan.epoch_mean(self._name)
    @property
    def name(self): return self._name


class ConditionalGAN(Callback):
    """Each training batch: the generator's loss becomes `lambda_l1` * L1 + adversarial term for critic(L, pred);
    after the generator's step the critic steps on (L, pred.detach()) against (L, ab) with its own optimizer.
    `warmup` batches train the critic alone first; the critic steps `critic_steps` times every `critic_every`
    batches; `label_smoothing` lowers the real target; `adv_loss` is 'vanilla' (pix2pix), 'lsgan' or 'hinge'."""
    order = MixedPrecision.order + 1  # after MixedPrecision has closed the generator's autocast

    def __init__(self, critic: nn.Module | None = None, adv_loss: str = "vanilla", lambda_l1: float = 100.0,
                 critic_lr: float = 2e-4, betas: tuple = (0.5, 0.999), warmup: int = 0, critic_steps: int = 1,
                 critic_every: int = 1, label_smoothing: float = 0.0):
        if adv_loss not in ADV_LOSSES:
            raise ValueError(f"adv_loss must be one of {', '.join(ADV_LOSSES)}, not '{adv_loss}'")
        self.critic = critic if critic is not None else build_critic()
        self.adv_loss, self.lambda_l1, self.critic_lr, self.betas = adv_loss, lambda_l1, critic_lr, tuple(betas)
        self.warmup, self.critic_steps, self.critic_every = warmup, critic_steps, critic_every
        self.label_smoothing, self.critic_opt, self.n_batches = label_smoothing, None, 0
        self.sums = dict.fromkeys(GAN_LOG, 0.0)
        self.counts = dict.fromkeys(GAN_LOG, 0)

    # -- fastai events ---------------------------------------------------------------------------------------
    def before_fit(self): self._setup()
    def after_fit(self): self.critic = _unwrap(self.critic)
    def before_train(self): self.sums, self.counts = dict.fromkeys(GAN_LOG, 0.0), dict.fromkeys(GAN_LOG, 0)
    def after_loss(self):
        if self.training: self._generator_loss()
    def after_backward(self): self.critic.requires_grad_(True)  # frozen only while the generator's loss flows back
    def after_step(self): self._maybe_critic_step()
    def after_batch(self):
        if self.training: self.n_batches += 1

    # -- the two nets' losses --------------------------------------------------------------------------------
    def _setup(self):
        "Critic on the data's device (channels_last on a GPU) and its own Adam, made once, kept across fits."
        gpu = on_gpu(self.dls)
        self.device_type = "cuda" if gpu else "cpu"
        fmt = torch.channels_last if gpu else torch.preserve_format
        self.critic = wrap_ddp(self.critic.to(self.dls.device or "cpu", memory_format=fmt))
        if self.critic_opt is None:  # fused on a GPU: one kernel for all of the critic's parameters
            self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=self.critic_lr, betas=self.betas,
                                               fused=gpu or None)
        mp = getattr(self.learn, "mixed_precision", None)
        self.amp_dtype = None if mp is None else (torch.bfloat16 if str(mp.amp_mode) == "bf16" else torch.float16)
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
        if self.n_batches < self.warmup:  # critic alone: judge, step, and leave the generator untouched
            self._critic_step()
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

    def metrics(self) -> list[Metric]: return [_EpochMean(self, n) for n in GAN_LOG]

    def checkpoint_state(self) -> dict:
        return {"critic": _unwrap(self.critic).state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "gan_batches": self.n_batches}

    def load_checkpoint_state(self, state: dict):
        self._setup()
        _unwrap(self.critic).load_state_dict(state["critic"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.n_batches = state["gan_batches"]


def gan_learner(dls, generator: nn.Module, critic: nn.Module | None = None, wd: float = 1e-4,
                precision: str = "auto", fused_adam: bool | str = "auto", compile: bool = False,
                freeze_encoder: bool = False, path: str = ".", cbs=None, **gan_kwargs) -> Learner:
    """Stage two: the stage-one Learner around `generator` (L1 loss, PSNR and colourfulness metrics) plus the
    ConditionalGAN callback with `critic` (pix2pix's PatchGAN by default); `gan_kwargs` go to ConditionalGAN.
    `freeze_encoder` keeps the generator's pretrained encoder fixed during this stage; `compile` compiles both nets."""
    learn = pretrain_learner(dls, model=generator, wd=wd, precision=precision, fused_adam=fused_adam,
                             compile=compile, path=path, cbs=cbs)
    gan = ConditionalGAN(critic, **gan_kwargs)
    if compile:
        compile_model(gan.critic)
    learn.add_cb(gan)
    learn.metrics = [*gan.metrics(), *learn.metrics]
    if freeze_encoder:
        learn.freeze()
    return learn
