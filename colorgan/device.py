"""One device policy: where a run computes and how (precision, optimizer kernel, memory layout, compilation),
decided once from the data's device and recorded in the resolved recipe, so the same recipe means the same
experiment on every device. Learners, the GAN callback and inference all read it from here."""
from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .utils import ColorganError

__all__ = ["DevicePolicy", "resolve_policy", "resolve_precision", "resolve_device", "bf16_native", "environment",
           "PRECISIONS"]

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class DevicePolicy:
    "What `resolve_policy` decided: no 'auto' is left in it."
    device: str
    precision: str
    fused_adam: bool
    channels_last: bool
    compile: bool | str

    @property
    def device_type(self) -> str: return torch.device(self.device).type

    @property
    def amp_dtype(self) -> torch.dtype | None:
        "The autocast dtype, or None for fp32."
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def as_dict(self) -> dict: return asdict(self)


def resolve_device(device=None) -> torch.device:
    "None -> the first GPU when there is one, else the CPU; a named device must exist here."
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ColorganError(f"unknown device '{device}': use cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ColorganError(f"device '{device}' asked for, but torch sees no CUDA GPU here: use cpu (to resume a GPU "
                            "run here: --set data.device=cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ColorganError(f"device '{device}' asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def bf16_native(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively: CPUs (autocast) and GPUs of compute capability 8.0 or later
    (A100, H100, RTX 30xx on). `torch.cuda.is_bf16_supported()` also counts emulation, which is slow on a T4 or
    V100 and has no cuDNN convolutions."""
    if device.type != "cuda":
        return True
    return torch.cuda.get_device_capability(device) >= (8, 0)


def cpu_bf16_units() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512_BF16 or AMX, from /proc/cpuinfo's flags): there bf16
    autocast trains stage one 1.45x faster than fp32 to the same validation figures (benchmarks/cpu_precision.py);
    elsewhere it is emulated. COLORGAN_CPU_BF16=1 or 0 overrides the reading (the tests pin it to 0)."""
    forced = os.environ.get("COLORGAN_CPU_BF16", "")
    return forced == "1" if forced in ("0", "1") else bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_flags() -> frozenset:
    "The CPU's feature flags (avx2, avx512f, amx_bf16, ...) as /proc/cpuinfo lists them; empty where it has none."
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return frozenset(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))


def resolve_precision(precision: str, device, training: bool = False) -> str:
    """'auto' -> bf16 on GPUs with native bf16, fp16 on older GPUs; on a CPU fp32, except for training on one
    with bf16 units (`cpu_bf16_units`: faster at the same quality; colorize keeps fp32, whose colours
    onnxruntime reproduces); a named precision is checked."""
    device = torch.device(device)
    if precision == "auto" and device.type == "cpu":
        return "bf16" if training and cpu_bf16_units() else "fp32"
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp16"
    if precision not in PRECISIONS:
        raise ColorganError(f"precision must be auto, {', '.join(PRECISIONS)}, not '{precision}'")
    if precision == "bf16" and not bf16_native(device):
        raise ColorganError(f"{torch.cuda.get_device_name(device)} has no native bfloat16 (compute capability "
                            f"below 8.0): use precision fp16 or auto")
    return precision


def _fused_supported(device: torch.device) -> bool:
    "torch's fused AdamW runs on CUDA and on the CPU."
    return device.type in ("cuda", "cpu")


def resolve_policy(device=None, precision: str = "auto", fused_adam: bool | str = "auto",
                   channels_last: bool | str = "auto", compile: bool | str = False) -> DevicePolicy:
    """Decide once: `device` (None: the GPU when there is one), `precision` (see `resolve_precision`),
    `fused_adam` (auto: wherever torch has the fused kernel), `channels_last` (auto: on GPUs, where cuDNN's
    tensor-core convolutions want it) and `compile`."""
    device = resolve_device(device)
    for name, value in (("fused_adam", fused_adam), ("channels_last", channels_last)):
        if value != "auto" and not isinstance(value, bool):
            raise ColorganError(f"{name} must be auto, true or false, not {value!r}")
    fused = _fused_supported(device) if fused_adam == "auto" else fused_adam
    if fused and not _fused_supported(device):
        raise ColorganError(f"fused AdamW has no kernel for {device.type}: set fused_adam = false")
    return DevicePolicy(str(device), resolve_precision(precision, device, training=True), bool(fused),
                        device.type == "cuda" if channels_last == "auto" else channels_last,
                        compile if isinstance(compile, str) else bool(compile))


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def environment(device=None) -> dict:
    """What a bug report needs: versions, the devices torch sees (compute capability, native bf16, memory) and the
    device policy a run would pick here."""
    import platform

    from . import __version__
    versions = {"colorgan": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "cuda": torch.version.cuda or "none (CPU build)",
                "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none",
                **{p: _version(p) for p in ("fastai", "timm", "accelerate", "onnxruntime")}}
    devices = [{"device": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                "bf16": "native" if cpu_bf16_units() else "emulated"}]
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append({"device": f"cuda:{i}", "name": props.name, "capability": f"{props.major}.{props.minor}",
                        "memory_gib": round(props.total_memory / 2 ** 30, 1),
                        "bf16": bf16_native(torch.device("cuda", i))})
    return {"versions": versions, "devices": devices, "policy": resolve_policy(device).as_dict()}
