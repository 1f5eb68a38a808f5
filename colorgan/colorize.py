"""`colorgan colorize`: files, folders and globs in, full-resolution colour photos out, mirrored under one folder.

An input is never overwritten, existing outputs are kept unless `overwrite`, and a file that cannot be read gets
a one-line error while the others go on; the caller sees how many failed. A film (by its suffix:
`colorgan.video.VIDEO_SUFFIXES`), named or found in a folder or by a glob, is colorized as a film (`colorgan.video`)
into its mirrored path, with the same collision check and counts as a photo.
"""
from __future__ import annotations

import glob
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastprogress.fastprogress import progress_bar
from PIL import Image

from .inference import Colorizer
from .photos import IMAGE_EXTENSIONS, exif_upright
from .utils import ColorganError, atomic_write_bytes, check_writable, log
from .video import colorize_video, is_video

__all__ = ["colorize_paths", "expand_inputs", "Outcome"]


@dataclass
class Outcome:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def expand_inputs(inputs, outcome: Outcome) -> list[tuple[Path, Path]]:
    """INPUT... -> [(photo, path relative to the output folder)]: folders recursively (mirrored), files (by name)
    and globs (mirrored below the glob's fixed part). Symlinked folders are not followed, a photo named twice is
    taken once, and photos whose outputs would collide are refused but the first, each with its reason."""
    pairs, seen = [], set()
    for text in map(str, inputs):
        for src, rel in _expand_one(text, outcome):
            if src.resolve() not in seen:
                seen.add(src.resolve())
                pairs.append((src, rel))
    kept, first = [], {}
    for src, rel in pairs:
        if rel in first:
            outcome.failed.append((str(src), f"its output {rel} would replace that of {first[rel]}: colorize "
                                             f"them in separate runs, or give their folders or a glob"))
        else:
            first[rel] = src
            kept.append((src, rel))
    return kept


def _wanted(path: Path) -> bool:
    "A photo or a film, by its suffix (any letter case)."
    return path.suffix.lower() in IMAGE_EXTENSIONS or is_video(path)


def _expand_one(text: str, outcome: Outcome) -> list[tuple[Path, Path]]:
    path = Path(text)
    if path.is_dir():  # pathlib's rglob does not descend into symlinked folders: no loops
        found = sorted(f for f in path.rglob("*") if _wanted(f) and f.is_file())
        if not found:  # an empty folder is that input's failure, not the command's
            outcome.failed.append((text, f"no photos in {path}, nor films: looked recursively for files ending in "
                                         f"{' '.join(sorted(IMAGE_EXTENSIONS))} or a film's suffix"))
        return [(f, f.relative_to(path)) for f in found]
    if path.is_file():
        return [(path, Path(path.name))]
    parts = path.parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    matches = [] if fixed == len(parts) else [
        m for m in sorted(root.glob(str(Path(*parts[fixed:])))) if _wanted(m) and m.is_file()]
    if not matches:
        outcome.failed.append((text, "no such file, folder or matching photo"))
    return [(m, m.relative_to(root)) for m in matches]


def _save(img: Image.Image, path: Path) -> None:
    "Encoded in memory, then written whole or not at all (`atomic_write_bytes`)."
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    atomic_write_bytes(path, buf.getvalue())


def _side_by_side(colorizer: Colorizer, src: Image.Image, colour: Image.Image) -> Image.Image:
    "gray | colour at full resolution; the gray half is the photo's own L with no chroma."
    gray = Image.fromarray(colorizer.combine(colorizer.lightness(src), torch.zeros(1, 2, 1, 1)))
    canvas = Image.new("RGB", (colour.width * 2, colour.height))
    canvas.paste(gray, (0, 0))
    canvas.paste(colour, (colour.width, 0))
    return canvas


def colorize_paths(colorizer: Colorizer, inputs, out: str | os.PathLike, overwrite: bool = False,
                   compare: bool = False, bs: int = 8, temporal: float = 0.6) -> Outcome:
    """Colorize every photo that `inputs` name into `out`, mirroring their paths, and every film (`temporal`: its
    smoothing strength); see the module's doc."""
    out, outcome = Path(out), Outcome()
    check_writable(out)
    pairs = expand_inputs(inputs, outcome) if inputs else []  # photos and films alike: one expansion, one check
    films = [(src, rel) for src, rel in pairs if is_video(src)]
    pairs = [(src, rel) for src, rel in pairs if not is_video(src)]
    for film, rel in films:
        _colorize_film(colorizer, film, out / rel, overwrite, temporal, bs, outcome)
    sources, claimed, todo = {p.resolve() for p, _ in pairs}, {(out / rel).resolve() for _, rel in pairs}, []
    for src, rel in pairs:
        dest = out / rel
        side = dest.with_name(f"{dest.stem}_compare{dest.suffix}") if compare else None
        writes = [dest] + ([side] if side else [])
        inputs_hit = [p for p in writes if p.resolve() in sources]
        not_files = [p for p in writes if p.exists() and not p.is_file()]
        if inputs_hit:
            outcome.failed.append((str(src), f"refusing to overwrite an input with {inputs_hit[0]}"))
        elif not_files:
            outcome.failed.append((str(src), f"its output {not_files[0]} is a folder (or another thing that is no "
                                             f"file): move it, or choose another --out"))
        elif side is not None and side.resolve() in claimed:
            outcome.failed.append((str(src), f"its comparison {side} would replace another photo's output"))
        elif not overwrite and any(p.exists() for p in writes):
            outcome.skipped.append(dest)
        else:
            todo.append((src, dest, side))
    if outcome.skipped:
        log.info(f"kept {len(outcome.skipped)} existing output(s); --overwrite replaces them")
    _run_chunks(colorizer, [todo[i:i + bs] for i in range(0, len(todo), bs)], outcome)
    return outcome


def _colorize_film(colorizer: Colorizer, src: Path, dest: Path, overwrite: bool, temporal: float, bs: int,
                   outcome: Outcome) -> None:
    "One film, or its one-line failure; never over its source, nor over an output that exists unless `overwrite`."
    if dest.resolve() == src.resolve():
        outcome.failed.append((str(src), f"refusing to overwrite an input with {dest}"))
    elif dest.exists() and not dest.is_file():
        outcome.failed.append((str(src), f"its output {dest} is a folder (or another thing that is no file): move "
                                         f"it, or choose another --out"))
    elif dest.exists() and not overwrite:
        outcome.skipped.append(dest)
    else:
        try:
            colorize_video(colorizer, src, dest, temporal=temporal, bs=bs)
            outcome.written.append(dest)
        except ColorganError as e:
            outcome.failed.append((str(src), str(e)))
            log.error(f"{src}: {e}; going on with the others")


def _run_chunks(colorizer: Colorizer, chunks: list, outcome: Outcome) -> None:
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
                saving = pool.submit(_save_chunk, colorizer, images, colours, outcome)
            done += len(chunks[i])
            if many:
                steps.comment = f"{done / (time.perf_counter() - start):.2f} photos/s"
        if saving is not None:
            saving.result()
    if many:
        log.info(f"{done} photos in {time.perf_counter() - start:.1f} s ({done / (time.perf_counter() - start):.2f} "
                 f"photos/s)")


def _read_chunk(chunk, outcome: Outcome) -> list[tuple[tuple[Path, Path | None], Image.Image]]:
    "Decode a chunk's photos, upright; any failure is that photo's, counted and named, never the command's."
    images = []
    for src, dest, side in chunk:
        try:
            with Image.open(src) as img:
                img.load()
                images.append(((dest, side), exif_upright(img)))
        except Exception as e:  # noqa: BLE001  a malformed EXIF block raises struct.error, a bomb its own error
            outcome.failed.append((str(src), f"cannot read: {type(e).__name__}: {e}"))
            log.error(f"{src}: cannot read ({e}); going on with the others")
    return images


def _save_chunk(colorizer: Colorizer, images, colours, outcome: Outcome) -> None:
    "Write a chunk's photos; a write that fails (EFBIG under `ulimit -f`, a quota) is that photo's failure alone."
    for ((dest, side), img), colour in zip(images, colours):
        try:
            _save(colour, dest)
            outcome.written.append(dest)
            if side is not None:
                _save(_side_by_side(colorizer, img, colour), side)
        except OSError as e:  # a full disk is a ColorganError (atomic_path): the command's, not one photo's
            outcome.failed.append((str(dest), f"cannot write it: {e.strerror or e}"))
            log.error(f"{dest}: cannot write it ({e.strerror or e}); going on with the others")
