"""`colorgan export`: the generator as an ONNX graph with dynamic height and width, checked against torch."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .artifacts import load_generator, resolve_artifact
from .color import denorm_ab, norm_l
from .models import STRIDE
from .utils import ColorganError, atomic_path, check_writable, log, require_extra

__all__ = ["LabGenerator", "export_onnx", "check_onnx"]


class LabGenerator(nn.Module):
    "The generator in CIELAB units: L (N,1,H,W) in [0,100] -> ab (N,2,H,W); H and W multiples of 32."
    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, l: torch.Tensor) -> torch.Tensor:
        return denorm_ab(self.generator(norm_l(l)))


def check_onnx(path: str | os.PathLike, module: nn.Module, shapes) -> list[tuple[tuple, float]] | None:
    "Largest |onnxruntime - torch| of the ab output at each shape; None when onnxruntime is not installed."
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    diffs = []
    for shape in shapes:
        l = torch.rand(shape, generator=gen) * 100
        with torch.no_grad():
            ref = module(l).numpy()
        got = session.run(None, {"L": l.numpy()})[0]
        diffs.append((tuple(shape), float(np.abs(got - ref).max())))
    return diffs


def check_onnx_path(onnx_path, model: Path, overwrite: bool) -> Path:
    """Where an export may write, as every command writes: a file name ending in .onnx, never the generator being
    read (nor a link to it), never a folder or anything but a regular file (a device: /dev/null), an existing file
    only with `overwrite`. Raises ColorganError naming the way out."""
    text = os.fspath(onnx_path)
    if not text.strip():
        raise ColorganError("--onnx needs the name of the file to write, e.g. --onnx generator.onnx")
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        raise ColorganError(f"--onnx {text} is a folder: give the file to write in it, e.g. {path / 'generator.onnx'}")
    if path.suffix.lower() != ".onnx":
        raise ColorganError(f"--onnx {text}: an ONNX file's name ends in .onnx (nothing else is written over)")
    if path.exists() or path.is_symlink():
        if path.exists() and os.path.samefile(path, model):
            raise ColorganError(f"--onnx {text} is the generator being exported ({model}): choose another file")
        if not path.is_file():
            raise ColorganError(f"--onnx {text} exists and is not a regular file: choose another path")
        if not overwrite:
            raise ColorganError(f"--onnx {text} already exists: pass --overwrite to replace it, or choose another "
                                f"path")
    check_writable(path.parent, "--onnx")
    return path


def export_onnx(model: str | os.PathLike, onnx_path: str | os.PathLike, opset: int = 17, check: bool = True,
                overwrite: bool = False):
    """Export a run folder or artefact to ONNX (input 'L', output 'ab', dynamic N, H, W) and, when onnxruntime is
    installed, check it matches torch within 1e-3 at two sizes. Returns the check's [(shape, max diff)].
    `onnx_path` follows `check_onnx_path` (an existing file is replaced only with `overwrite`)."""
    require_extra("onnx", "onnx")
    onnx_path = check_onnx_path(onnx_path, resolve_artifact(model), overwrite)
    net, meta = load_generator(model)
    module = LabGenerator(net).eval()
    size = _multiple_of_stride(meta["size"])
    diffs = None
    with atomic_path(onnx_path) as tmp, warnings.catch_warnings():  # named only once written and checked
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # DynamicUnet's shape checks: true at any size /32
        # The TorchScript exporter on purpose, though torch deprecates it: torch.export's (dynamo=True) needs
        # onnxscript, which colorgan does not install; its notice is this choice's, not the user's to act on.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning,
                                module=r"torch\.onnx")
        torch.onnx.export(module, (torch.rand(1, 1, size, size) * 100,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["L"], output_names=["ab"],
                          dynamic_axes={name: {0: "n", 2: "height", 3: "width"} for name in ("L", "ab")})
        if check:
            diffs = check_onnx(tmp, module, [(1, 1, size, size), (2, 1, size + STRIDE, 2 * size)])
            if diffs is None:
                log.info("onnxruntime is not installed: the exported graph was not checked (pip install onnxruntime)")
            elif not all(d <= 1e-3 for _, d in diffs):  # a NaN difference fails too
                raise ColorganError(f"ONNX export of {model} does not match torch: {diffs}; nothing was written")
    return diffs


def _multiple_of_stride(size: int) -> int:
    "The example input's side: the training size rounded up to a multiple of 32, which the traced graph needs."
    return max(STRIDE, -(-size // STRIDE) * STRIDE)
