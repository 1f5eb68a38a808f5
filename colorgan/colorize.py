"""`colorgan colorize`: files, folders and globs in, full-resolution colour photos out, mirrored under one folder.

An input is never overwritten, existing outputs are kept unless `overwrite`, and a file that cannot be read gets
a one-line error while the others go on; the caller sees how many failed.
"""
from __future__ import annotations

import glob
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastprogress.fastprogress import progress_bar
from PIL import Image

from .inference import Colorizer
from .photos import IMAGE_EXTENSIONS, find_photos
from .utils import atomic_path, log

__all__ = ["colorize_paths", "expand_inputs", "Outcome"]


@dataclass
class Outcome:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def expand_inputs(inputs, outcome: Outcome) -> list[tuple[Path, Path]]:
    "INPUT... -> [(photo, path relative to the output folder)]: folders recursively, files, and globs."
    pairs = []
    for text in map(str, inputs):
        path = Path(text)
        if path.is_dir():
            pairs += [(f, f.relative_to(path)) for f in find_photos(path)]
        elif path.is_file():
            pairs.append((path, Path(path.name)))
        else:
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))
                       if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_EXTENSIONS]
            if not matches:
                outcome.failed.append((text, "no such file, folder or matching photo"))
            pairs += [(m, Path(m.name)) for m in matches]
    return pairs


def _save(img: Image.Image, path: Path) -> None:
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def _side_by_side(colorizer: Colorizer, src: Image.Image, colour: Image.Image) -> Image.Image:
    "gray | colour at full resolution; the gray half is the photo's own L with no chroma."
    gray = Image.fromarray(colorizer.combine(colorizer.lightness(src), torch.zeros(1, 2, 1, 1)))
    canvas = Image.new("RGB", (colour.width * 2, colour.height))
    canvas.paste(gray, (0, 0))
    canvas.paste(colour, (colour.width, 0))
    return canvas


def colorize_paths(colorizer: Colorizer, inputs, out: str | os.PathLike, overwrite: bool = False,
                   compare: bool = False, bs: int = 8) -> Outcome:
    "Colorize every photo that `inputs` name into `out`, mirroring their paths; see the module's doc."
    out, outcome = Path(out), Outcome()
    pairs = expand_inputs(inputs, outcome)
    sources = {p.resolve() for p, _ in pairs}
    todo = []
    for src, rel in pairs:
        dest = out / rel
        if dest.resolve() in sources:
            outcome.failed.append((str(src), f"refusing to overwrite an input with {dest}"))
        elif dest.exists() and not overwrite:
            outcome.skipped.append(dest)
        else:
            todo.append((src, dest))
    if outcome.skipped:
        log.info(f"kept {len(outcome.skipped)} existing output(s); --overwrite replaces them")
    _run_chunks(colorizer, [todo[i:i + bs] for i in range(0, len(todo), bs)], compare, outcome)
    return outcome


def _run_chunks(colorizer: Colorizer, chunks: list, compare: bool, outcome: Outcome) -> None:
    """A pipeline over two threads beside the network: the next chunk is decoded and the last one encoded while
    this one is colorized (PIL lets go of the GIL in both), so a folder keeps both cores busy; at most three
    chunks are in memory at once."""
    many = sum(map(len, chunks)) > 1
    steps = progress_bar(range(len(chunks))) if many else range(len(chunks))
    start, done, saving = time.perf_counter(), 0, None
    with ThreadPoolExecutor(2) as pool:
        pending = pool.submit(_read_chunk, chunks[0], outcome) if chunks else None
        for i in steps:
            images = pending.result()
            pending = pool.submit(_read_chunk, chunks[i + 1], outcome) if i + 1 < len(chunks) else None
            if images:
                colours = colorizer.colorize([img for _, img in images])
                if saving is not None:
                    saving.result()
                saving = pool.submit(_save_chunk, colorizer, images, colours, compare, outcome)
            done += len(chunks[i])
            if many:
                steps.comment = f"{done / (time.perf_counter() - start):.2f} photos/s"
        if saving is not None:
            saving.result()
    if many:
        log.info(f"{done} photos in {time.perf_counter() - start:.1f} s ({done / (time.perf_counter() - start):.2f} "
                 f"photos/s)")


def _read_chunk(chunk, outcome: Outcome) -> list[tuple[Path, Image.Image]]:
    images = []
    for src, dest in chunk:
        try:
            with Image.open(src) as img:
                img.load()
                images.append((dest, img))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            outcome.failed.append((str(src), f"cannot read: {e}"))
            log.error(f"{src}: cannot read ({e}); going on with the others")
    return images


def _save_chunk(colorizer: Colorizer, images, colours, compare: bool, outcome: Outcome) -> None:
    for (dest, img), colour in zip(images, colours):
        _save(colour, dest)
        outcome.written.append(dest)
        if compare:
            _save(_side_by_side(colorizer, img, colour), dest.with_name(f"{dest.stem}_compare{dest.suffix}"))
