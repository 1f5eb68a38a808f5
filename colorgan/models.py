"""The networks: a timm body inside fastai's DynamicUnet (the generator) and pix2pix's PatchGAN (the critic)."""
from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from fastai.layers import NormType
from fastai.torch_core import params
from fastai.vision.learner import create_body
from fastai.vision.models.unet import DynamicUnet, ToTensorBase
from torch import nn

from .utils import ColorganError

__all__ = ["build_generator", "build_critic", "body_head_split", "AB_RANGE"]

AB_RANGE = (-1.0, 1.0)  # the generator's output bounds, in the scaled ab units of color.py


def _offline_help(arch: str) -> str:
    return (f"could not get ImageNet weights for '{arch}': timm's hub download failed (offline?). Either pass a "
            f"local weights file (model.weights=PATH in a recipe, or --weights PATH) or train from scratch with "
            f"--no-pretrained (model.pretrained=false)")


def _load_local_weights(model: nn.Module, weights: str | os.PathLike) -> None:
    "Load a timm state dict from a .pth/.pt/.bin or .safetensors file; a classifier of another size is dropped."
    path = Path(weights)
    if not path.is_file():
        raise ColorganError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any decode failure is the file's fault; say which file
        raise ColorganError(f"could not read weights file {path}: {e}") from e
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    own, head = model.state_dict(), model.default_cfg.get("classifier", "fc")
    misfits = [k for k in own.keys() | state.keys() if not k.startswith(head)
               and (k not in own or k not in state or own[k].shape != state[k].shape)]
    if misfits:
        raise ColorganError(f"weights file {path} does not fit '{model.default_cfg.get('architecture')}': "
                            f"{len(misfits)} tensors missing, extra or of another shape, e.g. {sorted(misfits)[:3]}")
    state = {k: v for k, v in state.items() if v.shape == own[k].shape}  # a classifier of another size is dropped
    model.load_state_dict(state, strict=False)


def _width_kwargs(arch: str, width: float, pretrained: bool, weights: str | None) -> dict:
    "timm keywords that scale a ResNet's channels by `width` (1.0: as published, the only width with weights)."
    if width == 1.0:
        return {}
    if not 0 < width <= 1:
        raise ColorganError(f"model width must be in (0, 1], not {width}")
    if pretrained or weights:
        raise ColorganError(f"model width {width} has no ImageNet weights (pretrained or a weights file): use width "
                            f"1.0, or --no-pretrained (model.pretrained=false) to train the narrower one from scratch")
    if not arch.startswith("resnet"):
        raise ColorganError(f"model width applies to timm's resnets only, not '{arch}'")
    return {"channels": tuple(max(8, round(c * width)) for c in (64, 128, 256, 512))}


def _timm_model(arch: str, pretrained: bool, weights: str | None, width: float = 1.0) -> nn.Module:
    narrow = _width_kwargs(arch, width, pretrained, weights)
    if weights:
        model = timm.create_model(arch, pretrained=False)
        _load_local_weights(model, weights)
        return model
    try:
        return timm.create_model(arch, pretrained=pretrained, **narrow)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ColorganError(f"timm has no model called '{arch}'") from e
        raise ColorganError(_offline_help(arch)) from e
    except (OSError, ConnectionError, ValueError) as e:  # hub errors surface as any of these
        raise ColorganError(_offline_help(arch)) from e


def build_generator(arch: str = "resnet18", pretrained: bool = True, weights: str | None = None,
                    img_size: int = 256, self_attention: bool = False, blur: bool = False,
                    spectral_norm: bool = False, width: float = 1.0) -> DynamicUnet:
    """A timm CNN body (one input channel: the first conv sums the RGB weights) inside fastai's DynamicUnet with
    two outputs bounded to the ab range. `weights` loads a local timm state dict instead of the hub's download.
    `self_attention`, `blur` and `spectral_norm` are the decoder options DeOldify found useful. `width` below 1
    narrows a resnet's channels (and so the decoder's) for training from scratch: 0.25 has 1/16 of the weights."""
    body = create_body(_timm_model(arch, pretrained, weights, width), n_in=1, pretrained=bool(pretrained or weights))
    unet = DynamicUnet(body, n_out=2, img_size=(img_size, img_size), blur=blur, self_attention=self_attention,
                       y_range=AB_RANGE, norm_type=NormType.Spectral if spectral_norm else None)
    _plain_output(unet)
    unet.arch = arch
    return unet


def _plain_output(unet: DynamicUnet) -> None:
    """Replace the last layer, fastai's ToTensorBase (no parameters), with Identity: its `as_subclass`, patched by
    fastai, recurses without end under torch.compile; a plain tensor out is all the Learner needs."""
    for i, layer in enumerate(unet.layers):
        if isinstance(layer, ToTensorBase):
            unet.layers[i] = nn.Identity()


def body_head_split(model: DynamicUnet) -> list:
    "Parameter groups [encoder, decoder], so `freeze()` and discriminative learning rates work."
    return [params(model[0]), params(nn.Sequential(*list(model.layers)[1:]))]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def build_critic(n_in: int = 3, n_filters: int = 64, n_strided: int = 3, norm: str = "spectral") -> nn.Sequential:
    """pix2pix's 70x70 PatchGAN: `n_strided` stride-2 4x4 convs doubling from `n_filters`, a stride-1 conv, then a
    one-channel map of real/fake logits, one per overlapping patch. Input: cat(L, ab), 3 channels.
    `norm` is 'spectral' (spectral normalisation of every conv, no feature norm: the default, see docs/gan.md),
    'batch' (pix2pix's: a critic that wins within a few dozen steps and drives the generator to blotches) or
    'instance'."""
    if norm not in {"batch", "instance", "spectral"}:
        raise ColorganError(f"critic norm must be batch, instance or spectral, not '{norm}'")
    sn = nn.utils.spectral_norm if norm == "spectral" else (lambda m: m)
    widths = [n_filters * min(2 ** i, 8) for i in range(n_strided + 1)]
    layers = [sn(nn.Conv2d(n_in, widths[0], 4, 2, 1)), nn.LeakyReLU(0.2, True)]
    for i in range(1, n_strided + 1):
        stride = 2 if i < n_strided else 1
        layers += [sn(nn.Conv2d(widths[i - 1], widths[i], 4, stride, 1, bias=norm == "spectral")),
                   _norm(norm, widths[i]), nn.LeakyReLU(0.2, True)]
    layers.append(sn(nn.Conv2d(widths[-1], 1, 4, 1, 1)))
    return nn.Sequential(*layers)
