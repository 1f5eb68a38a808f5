"""The recombination's fused loop: `color.rgb8_and_redo` compiled by torch's inductor ahead of time (AOTInductor),
built once a machine and kept in the cache folder, so that any later process loads it in milliseconds instead of
compiling it again (15-50 s on 2 cores). A package is keyed by what the compiled code depends on: torch's version,
colorgan's colour maths, the machine's architecture and CPU flags; a stamp beside it holds its hash, so a truncated,
changed or replaced file is never loaded, nor one that another user could have written (`_check_owner`).
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import tempfile
from pathlib import Path

import torch

from . import color
from .device import cpu_flags
from .photos import default_cache_dir
from .utils import is_stamped, log, sha256_of, write_stamp

__all__ = ["fused_loop", "package_path"]

MIN_SIDE = 2  # a strip with fewer rows or columns takes the eager path (export's dynamic sizes start at 2)
_LOADED: dict[Path, object] = {}  # this process's loaded loops, and the packages that failed to build or load (None)


def package_path() -> Path:
    "Where this machine's fused loop lives (or will), in the cache folder."
    return default_cache_dir() / "fused" / f"recombine-{_key()}.pt2"


@functools.cache
def _key() -> str:
    parts = [torch.__version__, sha256_of(Path(color.__file__)), platform.machine(), sorted(cpu_flags())]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


class _Strip(torch.nn.Module):
    def forward(self, lab: torch.Tensor, table: torch.Tensor):
        rgb8, redo = color.rgb8_and_redo(lab, table)  # traced as under torch.compile: `_planes_rgb8_and_redo`
        return rgb8.permute(0, 3, 1, 2), redo  # stored by planes (interleaved, its 8-bit loop took 1.5x as long)


def _build(path: Path) -> None:
    "Export the strip function with dynamic rows and columns, compile it, and keep the package with its stamp."
    from torch.export import Dim
    # a strip of colours outside sRGB (the whole path), of a real strip's size: inductor sizes its threads by it
    lab = torch.tensor([50.0, 90.0, 90.0]).view(1, 3, 1, 1).repeat(1, 1, 64, 4000)
    sides = {2: Dim("rows", min=MIN_SIDE), 3: Dim("columns", min=MIN_SIDE)}
    program = torch.export.export(_Strip(), (lab, color.chroma_table("cpu")), dynamic_shapes=(sides, None))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # this user's alone, whatever the umask
    with tempfile.TemporaryDirectory(dir=path.parent) as work:  # the package's name must end in .pt2
        built = Path(work) / path.name
        torch._inductor.aoti_compile_and_package(program, package_path=str(built))
        os.chmod(built, 0o600)
        os.replace(built, path)
    write_stamp(path)


def _check_owner(path: Path) -> None:
    """A package is native code this process runs: on POSIX it must belong to this user, and neither it nor its
    folder may be writable by others (a cache folder shared between users, as docs/distributed.md allows for the
    photo cache, would let any of them replace it). Raises PermissionError otherwise."""
    if not hasattr(os, "getuid"):
        return
    for p in (path, path.parent):
        st = p.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise PermissionError(f"{p} belongs to another user or others may write to it: native code there is not "
                                  f"loaded (give this user a cache folder of its own: COLORGAN_CACHE)")


def fused_loop(build: bool):
    """The fused loop as a callable (lab strip, chroma table) -> (uint8 strip, colours to redo), like
    `color.rgb8_and_redo`: loaded from the cache folder when this machine has built it, else, when `build`, compiled
    now (12-25 s on 2 cores here) and kept there. None where there is none and `build` is false, or where it cannot
    be built or loaded here (warned once a process; the eager path gives the same colours)."""
    path = package_path()
    if path in _LOADED:
        return _LOADED[path]
    try:
        if not is_stamped(path):
            if not build:
                return None
            log.info(f"colorize: compiling the recombination for this machine, once (kept in {path.parent})")
            _build(path)
        _check_owner(path)
        runner = torch._inductor.aoti_load_package(str(path))
    except Exception as e:  # no C++ compiler, an unsupported platform, a package from a broken build
        log.warning(f"colorize: the compiled recombination is not available here ({type(e).__name__}: {e}); "
                    f"running it uncompiled")
        _LOADED[path] = None
        return None

    def loop(lab: torch.Tensor, table: torch.Tensor):
        if min(lab.shape[-2:]) < MIN_SIDE:
            return color.rgb8_and_redo(lab, table)
        planes, redo = runner(lab.contiguous(), table)
        return planes.permute(0, 2, 3, 1), redo
    _LOADED[path] = loop
    return loop
