"Small helpers shared by every module: the package logger and atomic file writes."
from __future__ import annotations

import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("colorgan")
if not log.handlers:  # a library that trains for minutes should say what it does; silence with logging as usual
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("colorgan: %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)


class ColorganError(Exception):
    "An error caused by the user's input (a path, a recipe, a checkpoint); its message says what to do."


@contextmanager
def atomic_path(dest: str | os.PathLike):
    """Yield a temporary path beside `dest`; on success it replaces `dest` in one step, so a reader (or a
    crash) never sees a half-written file. On failure the temporary file is removed and `dest` is untouched."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def short_list(items, n: int = 3) -> str:
    "'a, b, c and 4 more' for messages that name the first few of many things."
    items = [str(i) for i in items]
    head = ", ".join(items[:n])
    return head + (f" and {len(items) - n} more" if len(items) > n else "")
