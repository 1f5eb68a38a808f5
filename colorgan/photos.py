"""Photos: any PIL image to sRGB or lightness, finding photos in a folder, and decoding each one once into a
uint8 cache at the training size.

The cache is a memory-mapped (N, S, S, 3) array built on first use by CPU worker processes and rebuilt when the
folder changes (any file added, removed, resized or touched), so later epochs and later runs decode nothing.
It lives in the user's cache folder, never beside the photos: a user's input folder is not written to.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .color import lightness_of_gray8, lightness_of_rgb8, rgb_to_lab
from .utils import TEMP_SUFFIX, ColorganError, atomic_path, check_writable, log, short_list

try:
    import fcntl  # POSIX: a cache build holds a lock on its temporary, so a killed build's file can be told apart
except ImportError:  # Windows: no locks; a killed build's temporary stays until its folder is cleared
    fcntl = None

_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_GRAY_MODES = {"1", "L", "LA"} | _WIDE_MODES


def _wide_gray(img: Image.Image) -> np.ndarray:
    "A 16-bit, 32-bit or float gray image -> float32 (H,W) in [0,1], keeping its full precision."
    arr = np.asarray(img, dtype=np.float32)
    if img.mode == "F":
        return np.clip(arr, 0, 1)
    peak = 255.0 if img.mode == "I" and arr.max(initial=0) <= 255 else 65535.0
    return np.clip(arr / peak, 0, 1)


def pil_to_rgb8(img: Image.Image) -> Image.Image:
    "Any PIL image -> an 8-bit RGB PIL image (16-bit gray rounded to 8 bits). Apply EXIF orientation first."
    if img.mode in _WIDE_MODES:
        return Image.fromarray((_wide_gray(img) * 255 + 0.5).astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    return img.convert("RGB")


def pil_to_l(img: Image.Image) -> torch.Tensor:
    "Any PIL image -> its CIELAB lightness as a (1,1,H,W) float32 tensor in [0,100], EXIF orientation applied."
    img = exif_upright(img)
    if img.mode == "L":
        return lightness_of_gray8(np.asarray(img))
    if img.mode in _WIDE_MODES:
        return rgb_to_lab(torch.from_numpy(_wide_gray(img))[None, None].expand(1, 3, -1, -1))[:, :1]
    return lightness_of_rgb8(np.asarray(img if img.mode == "RGB" else pil_to_rgb8(img)))


def exif_upright(img: Image.Image) -> Image.Image:
    "The image as its EXIF orientation says to show it; the image itself (no copy) when it is upright already."
    return ImageOps.exif_transpose(img) if img.getexif().get(0x0112, 1) != 1 else img


def is_grayscale(img: Image.Image | np.ndarray, tolerance: int = 6, max_fraction: float = 0.01) -> bool:
    """Whether an image carries no colour: a gray mode, or RGB whose channels agree (within `tolerance` of 255)
    on all but `max_fraction` of its pixels, which forgives JPEG's chroma noise in gray photos saved as RGB."""
    if isinstance(img, Image.Image):
        if img.mode in _GRAY_MODES:
            return True
        img = np.asarray(img.convert("RGB"))
    spread = img.max(axis=-1).astype(np.int16) - img.min(axis=-1).astype(np.int16)
    return float(np.mean(spread > tolerance)) <= max_fraction


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
CACHE_FORMAT = 1
OK, GRAY, UNREADABLE = "ok", "gray", "unreadable"


def find_photos(folder: str | os.PathLike) -> list[Path]:
    "Every photo under `folder` (recursive; extensions in any letter case), sorted; a clear error if none."
    folder = Path(folder)
    if not folder.is_dir():
        raise ColorganError(f"photo folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        raise ColorganError(f"no photos in {folder}: looked recursively for files ending in {exts}")
    return files


def fit_photo(img: Image.Image, size: int) -> np.ndarray:
    "A PIL image -> uint8 (size,size,3): upright (EXIF), 8-bit RGB, centre crop scaled to `size` (up or down)."
    return np.asarray(ImageOps.fit(pil_to_rgb8(exif_upright(img)), (size, size), Image.Resampling.BICUBIC),
                      dtype=np.uint8)


def decode_photo(path: str | os.PathLike, size: int) -> tuple[str, np.ndarray | None]:
    """One photo -> (status, uint8 (size,size,3) centre crop). Status is 'ok', 'gray' (no colour to learn) or
    'unreadable' (corrupt, truncated, not an image); EXIF orientation is applied; small photos are upscaled."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at the smallest scale that still covers `size`
            arr = fit_photo(img, size)
    except Exception:  # noqa: BLE001  whatever one photo raises (a malformed EXIF block: struct.error) is its own
        return UNREADABLE, None
    return (GRAY if is_grayscale(arr) else OK), arr


@dataclass
class PhotoSet:
    "Decoded photos: `pixels` (N,S,S,3) uint8 memmap, one status per file; `usable()` picks what to train on."
    files: list[Path]
    statuses: list[str]
    pixels: np.ndarray

    def usable(self, keep_gray: bool = False) -> np.ndarray:
        keep = {OK, GRAY} if keep_gray else {OK}
        return np.array([i for i, s in enumerate(self.statuses) if s in keep], dtype=np.int64)

    def named(self, status: str) -> list[str]:
        return [f.name for f, s in zip(self.files, self.statuses) if s == status]


def report(sets: list[PhotoSet], keep_gray: bool = False) -> None:
    "One summary line for the unreadable files of all `sets`, and one for the gray photos left out."
    bad = [name for s in sets for name in s.named(UNREADABLE)]
    gray = [name for s in sets for name in s.named(GRAY)]
    if bad:
        log.warning(f"skipped {len(bad)} unreadable file(s): {short_list(bad)}")
    if gray and not keep_gray:
        log.info(f"left out {len(gray)} gray photo(s) with no colour to learn from: {short_list(gray)}"
                 " (keep them with data.keep_gray=true)")


def default_cache_dir() -> Path:
    return Path(os.environ.get("COLORGAN_CACHE", Path.home() / ".cache" / "colorgan"))


_SCRATCH: list[Path] = []  # this process's stand-in for a cache folder it cannot write, removed at exit


def writable_cache(folder: Path) -> Path:
    """`folder` (in the cache) when this process can write there, else a temporary stand-in, with one warning
    naming COLORGAN_CACHE: a read-only or missing home, a file in the cache's place, a locked-down container.
    What is already cached is still read from `folder`; only what must be written goes to the stand-in."""
    try:
        check_writable(folder, "the cache folder")
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except (ColorganError, OSError) as e:
        if not _SCRATCH:
            _SCRATCH.append(Path(tempfile.mkdtemp(prefix="colorgan-cache-")))
            atexit.register(shutil.rmtree, _SCRATCH[0], True)
            log.warning(f"{e}: working without it, in {_SCRATCH[0]} (gone at exit; photos are decoded and models "
                        f"exported again each run). Point COLORGAN_CACHE at a folder this user can write to keep "
                        f"them")
        scratch = _SCRATCH[0] / folder.name
        scratch.mkdir(exist_ok=True)
        return scratch


SAMPLE_BLOCK = 4096  # bytes of each photo the cache's key reads: the first, middle and last block


def _content_sample(path: Path, size: int) -> bytes:
    """The first, middle and last SAMPLE_BLOCK bytes of a file: a photo replaced by another of the same length and
    modification time (BMP and TIFF keep their length; FAT cards keep 2-second times) changes them."""
    with open(path, "rb") as f:
        parts = []
        for at in sorted({0, max(0, size // 2 - SAMPLE_BLOCK // 2), max(0, size - SAMPLE_BLOCK)}):
            f.seek(at)
            parts.append(f.read(SAMPLE_BLOCK))
    return b"".join(parts)


def _cache_stem(files: list[Path], size: int) -> tuple[str, str]:
    """(prefix naming the folder and size: one cache each, a changed folder replaces its own; digest of every file's
    path, length, modification time and a sample of its content, `_content_sample`)"""
    where = hashlib.sha1(os.fsencode(os.path.commonpath([str(f.resolve().parent) for f in files]))).hexdigest()[:10]
    h = hashlib.sha1(f"{CACHE_FORMAT}:{size}".encode())
    for f in files:  # os.fsencode: a file name that is not valid UTF-8 hashes as the bytes it is on disk
        st = f.stat()
        h.update(os.fsencode(f.resolve()) + f":{st.st_size}:{st.st_mtime_ns}\n".encode())
        h.update(hashlib.sha1(_content_sample(f, st.st_size)).digest())
    return f"{where}-{size}px", h.hexdigest()[:16]


def _decode_all(files: list[Path], size: int, out: np.ndarray, decode_workers: int) -> list[str]:
    "Decode every file into its row of `out` (in worker processes when `decode_workers` > 1); return the statuses."
    args = ([str(f) for f in files], [size] * len(files))
    if decode_workers <= 1:
        return _collect(map(decode_photo, *args), out)
    with ProcessPoolExecutor(decode_workers) as pool:
        return _collect(pool.map(decode_photo, *args, chunksize=16), out)


def _collect(results, out: np.ndarray) -> list[str]:
    statuses = []
    for i, (status, arr) in enumerate(results):
        statuses.append(status)
        if arr is not None:
            out[i] = arr
    return statuses


def load_photos(files: list[Path], size: int, cache_dir: str | os.PathLike | None = None,
                decode_workers: int | None = None) -> PhotoSet:
    "Decode `files` at `size` into the cache (or reuse it when the files have not changed) and map it."
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    prefix, digest = _cache_stem(files, size)
    npy, meta = cache_dir / f"{prefix}-{digest}.npy", cache_dir / f"{prefix}-{digest}.json"
    if not (npy.exists() and meta.exists()):
        where = writable_cache(cache_dir)
        if where != cache_dir:
            cache_dir, npy, meta = where, where / npy.name, where / meta.name
        _build_cache(files, size, npy, meta, decode_workers or min(os.cpu_count() or 1, 16))
        for stale in cache_dir.glob(f"{prefix}-*"):
            if digest not in stale.name:
                stale.unlink(missing_ok=True)
    statuses = json.loads(meta.read_text())["statuses"]
    return PhotoSet(files, statuses, np.load(npy, mmap_mode="r"))


def remove_orphans(npy: Path) -> None:
    """Remove what a write of `npy` that was killed (kill -9, a power cut) left: its temporary (a cache build's, a
    film's).
    A build still running holds a lock on its file and is left alone; without POSIX locks (Windows) nothing can
    tell the two apart, and nothing is removed."""
    if fcntl is None:
        return
    for tmp in npy.parent.glob(f".{npy.name}.*{TEMP_SUFFIX}"):
        try:
            with open(tmp, "rb") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                tmp.unlink()
        except (BlockingIOError, FileNotFoundError):
            continue


def _build_cache(files: list[Path], size: int, npy: Path, meta: Path, decode_workers: int) -> None:
    log.info(f"decoding {len(files)} photos at {size} px into the cache {npy.parent} (once)")
    npy.parent.mkdir(parents=True, exist_ok=True)
    need, free = len(files) * size * size * 3 + 2 ** 20, shutil.disk_usage(npy.parent).free
    if need > free:
        raise ColorganError(f"the photo cache {npy.parent} needs {need / 2 ** 20:.0f} MB for {len(files)} photos at "
                            f"{size} px and its disk has {free / 2 ** 20:.0f} MB free: free some space, or point "
                            f"COLORGAN_CACHE (or data.cache_dir) at another disk")
    remove_orphans(npy)
    with atomic_path(npy) as tmp, open(tmp, "r+b") as held:
        if fcntl is not None:
            fcntl.flock(held, fcntl.LOCK_EX)  # held while this process lives: a killed build's file is unlocked
        pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3))
        if hasattr(os, "posix_fallocate"):  # a memory map meeting a full disk dies of SIGBUS
            os.posix_fallocate(held.fileno(), 0, os.path.getsize(tmp))
        statuses = _decode_all(files, size, pixels, decode_workers)
        pixels.flush()
        del pixels
    with atomic_path(meta) as tmp:
        tmp.write_text(json.dumps({"statuses": statuses, "files": [str(f) for f in files]}))
