"""The generator artefact: a state dict plus the metadata needed to rebuild and use it, loaded with weights_only.

Both stages write the same format, so every command that takes MODEL accepts either stage's artefact, or a run
folder holding one (`generator.pth`).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .color import SCALINGS
from .models import build_generator
from .utils import ColorganError, atomic_path, short_list

__all__ = ["save_generator", "load_generator", "resolve_artifact", "ARTIFACT_NAME", "CRITIC_NAME", "generator_meta",
           "save_critic", "load_critic_state"]

ARTIFACT_NAME, CRITIC_NAME = "generator.pth", "critic.pth"
FORMAT = "colorgan-generator"
FORMAT_VERSION = 1
BUILD_KEYS = ("arch", "self_attention", "blur", "spectral_norm", "width", "out_stride", "head")


def generator_meta(build: dict, size: int, stage: str, recipe: dict) -> dict:
    """Metadata stored with the weights: how to rebuild the network (`build_generator` keywords), its training size,
    the stage, the scalings, the resolved recipe and colorgan's version."""
    return {"build": {k: build[k] for k in BUILD_KEYS if k in build}, "size": int(size), "stage": stage,
            "scalings": dict(SCALINGS), "recipe": _no_none(recipe), "colorgan_version": __version__}


def _no_none(recipe: dict) -> dict:
    return {s: {k: v for k, v in kv.items() if v is not None} for s, kv in recipe.items()}


def _save_state(module: nn.Module, path: str | os.PathLike, header: dict) -> Path:
    "`header` plus the module's CPU state dict, written atomically: a reader never sees half a file."
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in _unwrap(module).state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({**header, "state_dict": state}, tmp)
    return path


def save_generator(model: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write the artefact atomically; a crash leaves the old one in place. Without `meta`, the network's own record
    of how `build_generator` made it and at what size (a model trained in Python: `save_generator(learn.model,
    path)` gives a file that colorize, serve and export take)."""
    if meta is None:
        net = _unwrap(model)
        if not hasattr(net, "build"):
            raise ColorganError("save_generator needs `meta` for a network that build_generator did not make")
        meta = generator_meta(net.build, net.img_size, "python", {})
    return _save_state(model, path, {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta})


def _unwrap(model: nn.Module) -> nn.Module:
    "The plain module inside DDP or torch.compile wrappers."
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def resolve_artifact(model: str | os.PathLike) -> Path:
    "MODEL as a user gives it (a run folder or an artefact file) -> the artefact file, or a clear error."
    path = Path(model)
    if path.is_dir():
        path = path / ARTIFACT_NAME
        if not path.is_file():
            raise ColorganError(f"{model} is a folder without {ARTIFACT_NAME}: is it a finished colorgan run?")
    elif not path.is_file():
        raise ColorganError(f"model {model} does not exist: give a run folder or a {ARTIFACT_NAME} file")
    return path


def load_generator(model: str | os.PathLike, device="cpu") -> tuple[nn.Module, dict]:
    "A run folder or artefact file -> (generator in eval mode on `device`, its metadata)."
    path = resolve_artifact(model)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ColorganError(f"{path} is not a readable colorgan artefact: {e}") from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ColorganError(f"{path} is not a colorgan generator artefact (no '{FORMAT}' header)")
    meta, state = blob.get("meta"), blob.get("state_dict")
    if not (isinstance(meta, dict) and isinstance(meta.get("build"), dict) and isinstance(meta.get("size"), int)
            and isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ColorganError(f"{path} has colorgan's header but not its contents (metadata with 'build' and 'size', "
                            f"and a state dict of tensors): was it written by colorgan?")
    if meta.get("scalings") != SCALINGS:
        raise ColorganError(f"{path} was trained with other L/ab scalings {meta.get('scalings')}; this colorgan "
                            f"uses {SCALINGS}")
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise ColorganError(f"{path} holds NaN or infinite weights ({short_list(broken)}): the run that wrote it "
                            f"diverged; train again with a lower fit.lr_max")
    try:
        net = build_generator(pretrained=False, img_size=meta["size"], **meta["build"])
        net.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise ColorganError(f"{path}: its weights do not fit the network its metadata describes "
                            f"({str(e).splitlines()[0][:200]})") from None
    _check_output(net.eval(), path, meta["size"])
    return net.to(device), meta


def _check_output(net: nn.Module, path: Path, size: int) -> None:
    """Refuse a generator whose output on a plain gray ramp is not finite: finite weights of a diverged run (up to
    1e28) that would colour every photo black."""
    side = max(32, min(size, 64) // 32 * 32)
    ramp = torch.linspace(-1, 1, side).expand(1, 1, side, side).contiguous()
    with torch.no_grad():
        out = net(ramp)
    if not torch.isfinite(out).all():
        raise ColorganError(f"{path}'s generator outputs NaN or infinite colour: the run that wrote it diverged; "
                            f"train again with a lower fit.lr_max")


def save_critic(critic: nn.Module, path: str | os.PathLike, build: dict) -> Path:
    "The critic beside the generator, with the `build_critic` keywords that rebuild it."
    return _save_state(critic, path, {"format": "colorgan-critic", "build": build})


def load_critic_state(path: str | os.PathLike) -> dict:
    "{'build': build_critic keywords, 'state_dict': ...} of a saved critic."
    return torch.load(path, map_location="cpu", weights_only=True)
