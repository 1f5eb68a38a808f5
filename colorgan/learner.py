"""Learners a Python user can keep using: `lr_find`, `fit_one_cycle`, `show_results`, `export` all work."""
from __future__ import annotations

from functools import partial

import fastai.callback.fp16  # noqa: F401  (patches Learner.to_fp16 / to_bf16)
import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle / lr_find)
import torch
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import L1LossFlat
from fastai.optimizer import Adam, OptimWrapper

from .metrics import colorfulness_metric, psnr_metric
from .models import body_head_split, build_generator

__all__ = ["pretrain_learner", "resolve_precision", "use_accelerator"]


def resolve_precision(precision: str = "auto") -> str:
    "'auto' -> 'bf16' on a GPU that supports it, 'fp16' on other GPUs, 'fp32' on CPU."
    if precision != "auto":
        return precision
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def use_accelerator(learn: Learner, precision: str = "auto") -> Learner:
    "Mixed precision and channels_last when the Learner's data lives on a GPU; nothing changes on CPU."
    precision = resolve_precision(precision)
    if precision not in {"fp32", "fp16", "bf16"}:
        raise ValueError(f"precision must be auto, fp32, fp16 or bf16, not '{precision}'")
    if on_gpu(learn.dls):
        learn.model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    if precision == "bf16":
        learn.to_bf16()
    elif precision == "fp16":
        learn.to_fp16()
    return learn


def on_gpu(dls: DataLoaders) -> bool:
    return dls.device is not None and torch.device(dls.device).type == "cuda"


def adam(dls: DataLoaders, fused: bool | str = "auto"):
    """fastai's Adam on CPU; torch's fused AdamW (one kernel for all parameters) on a GPU, wrapped so fastai's
    schedulers, freezing and discriminative learning rates still drive it. Both decay weights decoupled."""
    if fused == "auto":
        fused = on_gpu(dls)
    return partial(OptimWrapper, opt=partial(torch.optim.AdamW, fused=True)) if fused else Adam


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    "torch.compile in place (the module keeps its type, so splitters, saving and indexing still work)."
    model.compile()
    return model


def pretrain_learner(dls: DataLoaders, model: torch.nn.Module | None = None, wd: float = 1e-4,
                     precision: str = "auto", fused_adam: bool | str = "auto", compile: bool = False,
                     path: str = ".", cbs=None, **generator_kwargs) -> Learner:
    """Stage one: the generator (built from `generator_kwargs` by `build_generator` unless `model` is given) on L1
    of ab, with PSNR of the RGB result and the colourfulness of predictions as metrics, and an encoder/decoder
    splitter so `freeze()` and discriminative learning rates work. On a GPU: mixed precision (`precision`),
    channels_last, fused AdamW, and `compile=True` for torch.compile."""
    if model is None:
        model = build_generator(img_size=dls.train.size, **generator_kwargs)
    learn = Learner(dls, compile_model(model) if compile else model, loss_func=L1LossFlat(),
                    opt_func=adam(dls, fused_adam), wd=wd, splitter=body_head_split,
                    metrics=[psnr_metric(), colorfulness_metric()], path=path, cbs=cbs)
    return use_accelerator(learn, precision)
