"Small helpers shared by every module: the package logger and atomic file writes."
from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("colorgan")  # no handler here: importing colorgan changes no logging or warnings setup


def enable_logging() -> None:
    """What the `colorgan` command sets up (a Python user may call it too, or configure logging as usual): its
    progress lines on stderr, and silence for a deprecation warning fastai 2.8 triggers at import on torch >= 2.10
    (fastai's to fix, not the user's)."""
    if not any(getattr(h, "_colorgan", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("colorgan: %(message)s"))
        handler._colorgan = True
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


class ColorganError(Exception):
    """An error caused by the user's input (a path, a recipe, a checkpoint) or the machine (a full disk); its message
    says what to do. It keeps its message when fastai prefixes the args of an error raised inside a callback."""
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


TEMP_SUFFIX = ".colorgan.tmp"  # every temporary colorgan writes ends so; `.NAME.XXXXXXXX.colorgan.tmp`, no user file


@contextmanager
def atomic_path(dest: str | os.PathLike):
    """Yield a temporary path beside `dest`; on success it replaces `dest` in one step, so a reader (or a
    crash) never sees a half-written file. On failure the temporary file is removed and `dest` is untouched."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=TEMP_SUFFIX, dir=dest.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide a colorized photo from a web server or colleague
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    except Exception as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        _raise_if_disk_full(e, dest)
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    """`data` into `dest` atomically, and only whole: written, flushed to the disk and its size checked before the
    rename, so a full disk that truncates the file silently never leaves a short file under the final name."""
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if os.path.getsize(tmp) != len(data):
            raise OSError(errno.ENOSPC, f"only {os.path.getsize(tmp)} of {len(data)} bytes reached the disk", str(tmp))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def is_stamped(path: Path, source: str = "") -> bool:
    """Whether `path` is a file whose stamp beside it (NAME.sha256) holds its hash, and `source` (what it was made
    from: another artefact's file with its own stamp does not match): a cached file that was cut short, emptied,
    changed or replaced (by a folder, another file) no longer matches it."""
    try:
        return path.is_file() and _stamp(path).is_file() and \
            _stamp(path).read_text().strip() == f"{sha256_of(path)} {source}".strip()
    except OSError:
        return False


def write_stamp(path: Path, source: str = "") -> None:
    "The stamp `is_stamped` checks, written atomically once `path` is complete: its hash, and `source`'s."
    with atomic_path(_stamp(path)) as tmp:
        tmp.write_text(f"{sha256_of(path)} {source}".strip())


def remove_stamped(path: Path) -> None:
    "A cached file and its stamp, gone (a folder in its place too)."
    for p in (path, _stamp(path)):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def _umask() -> int:
    "The process's umask, read without changing it (Linux says it in /proc; elsewhere set and restore it)."
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


FULL_DISK_MB = 64  # less free than this after a failed write: the disk is the cause


def _raise_if_disk_full(error: Exception, dest: Path) -> None:
    """A write that failed on a full disk (OSError ENOSPC, or torch.save's 'unexpected pos') -> one clear message
    naming the folder and what is free; any other failure is left as it is."""
    try:
        free_mb = shutil.disk_usage(dest.parent).free / 2 ** 20
    except OSError:
        return
    if getattr(error, "errno", None) == errno.ENOSPC or free_mb < FULL_DISK_MB:
        raise ColorganError(f"the disk holding {dest.parent} is full ({free_mb:.0f} MB free) while writing "
                            f"{dest.name}: free some space and run the command again (--resume continues a run from "
                            f"its last saved epoch)") from error


def require_extra(extra: str, *modules: str) -> None:
    "Refuse at once, naming the extra to install, when a module an optional feature imports is missing."
    import importlib.util
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ColorganError(f"this needs {', '.join(missing)}, which the plain install does not bring: "
                            f"pip install 'colorgan[{extra}]'")


def short_list(items, n: int = 3) -> str:
    "'a, b, c and 4 more' for messages that name the first few of many things."
    items = [str(i) for i in items]
    head = ", ".join(items[:n])
    return head + (f" and {len(items) - n} more" if len(items) > n else "")


def check_out(run: Path, data, reads: Path | None = None) -> None:
    """Refuse an --out that would lose the user's data: inside the photo folder `data` (sample grids would become
    photos), the folder holding `reads` (the generator being read), a file, or a place that cannot be written."""
    out, photos = run.resolve(), Path(data).resolve()
    if out == photos or photos in out.parents:
        raise ColorganError(f"--out {run} is inside the photo folder {data}: what colorgan writes there would mix "
                            f"with your photos (and be read as photos next time); choose a folder outside it")
    if reads is not None and out in Path(reads).resolve().parents:
        raise ColorganError(f"--out {run} holds the generator being read ({reads}): write stage two to another "
                            f"folder, e.g. {run}-gan")
    check_writable(run)


def check_writable(folder: str | os.PathLike, what: str = "--out") -> None:
    """Refuse, before anything is written, a folder that cannot be made or written: a file on its path, no
    permission, a read-only disk, a place like /proc. A file is made and removed in the nearest folder that exists
    (root passes every permission test, not a read-only mount)."""
    folder = Path(folder).absolute()
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    if not existing.is_dir():
        raise ColorganError(f"{what} {folder} cannot be made: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ColorganError(f"{what} {folder} cannot be written: no permission to write in {existing}")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".colorgan-probe-", suffix=TEMP_SUFFIX):
            pass
    except OSError as e:
        raise ColorganError(f"{what} {folder} cannot be written: {existing} takes no files "
                            f"({e.strerror or e})") from None
