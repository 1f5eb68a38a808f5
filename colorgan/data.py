"""A folder of photos -> fastai DataLoaders of (L, ab) batches.

Photos are decoded once into a uint8 cache (see `photos.py`). A batch leaves the cache as uint8 RGB, moves to the
batch's device (the GPU when there is one), and there it is augmented (random resized crop, flip) and converted to
CIELAB in one batched step, so L and ab always get the same crop and no Python loop runs per image.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.data.transforms import ItemTransform
from fastai.torch_core import TensorImage
from PIL import Image

from .color import gray_rgb, lab_to_model, model_to_rgb, rgb_to_lab
from .device import resolve_device
from .metrics import colorfulness
from .photos import PhotoSet, decode_photo, find_photos, fit_photo, load_photos, report
from .show import show_columns
from .utils import ColorganError, log

__all__ = ["ToLab", "LabDataLoader", "LabDataLoaders", "photo_dls", "split_photos", "split_indices", "random_resized_crop",
           "crop_thetas", "crop"]


def crop_thetas(n: int, min_scale: float = 0.35, ratio=(3 / 4, 4 / 3), flip_p: float = 0.5,
                device=None) -> torch.Tensor:
    "n random resized crops with horizontal flips, as `affine_grid` matrices (n,2,3) for `crop`."
    area = torch.empty(n, device=device).uniform_(min_scale, 1.0)
    log_r = torch.empty(n, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, device=device) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, device=device) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, device=device) < flip_p, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
    return theta


def crop(rgb: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    "Each photo of a batch (N,C,H,W) cropped and resized back to (H,W) by its `crop_thetas` matrix, in one call."
    grid = F.affine_grid(theta.to(rgb.device, rgb.dtype), list(rgb.shape), align_corners=False)
    return F.grid_sample(rgb, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_resized_crop(rgb: torch.Tensor, min_scale: float = 0.35, ratio=(3 / 4, 4 / 3),
                        flip_p: float = 0.5) -> torch.Tensor:
    "Per-sample random resized crop and horizontal flip of a batch (N,C,H,W), in one `grid_sample` call."
    return crop(rgb, crop_thetas(rgb.shape[0], min_scale, ratio, flip_p, rgb.device))


class CachedPhotos:
    """The usable rows `index` of uint8 photos (N,S,S,3), usually the cache's memory map, which stays on disk
    (selecting rows never copies the cache into memory); `new_empty` lets fastai export a Learner."""
    def __init__(self, pixels: np.ndarray, index: np.ndarray | None = None):
        self.pixels = pixels
        self.index = np.arange(len(pixels)) if index is None else np.asarray(index)

    def __len__(self): return len(self.index)
    def __getitem__(self, i):
        "The rows asked for, in the order asked; read from the memory map in sorted order (sequential reads)."
        rows = np.atleast_1d(self.index[i])
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.pixels.shape[1:]), dtype=self.pixels.dtype)
        out[order] = self.pixels[rows[order]]
        return out if np.ndim(self.index[i]) else out[0]
    def __array__(self, dtype=None, copy=None): return np.asarray(self.pixels[self.index], dtype=dtype)
    @property
    def shape(self): return (len(self.index), *self.pixels.shape[1:])
    def new_empty(self): return CachedPhotos(np.zeros((0, *self.pixels.shape[1:]), dtype=np.uint8))


class ToLab(ItemTransform):
    """The batch step, as a fastai Transform: uint8 RGB (N,H,W,3) on the batch's device -> the model's (L, ab),
    augmented there when `augment` (one random resized crop and flip of the RGB, so L and ab stay aligned), or (L,)
    alone without a target; `decodes` takes (L, ab...) back to RGB (N,3,H,W) in [0,1] through color.py."""
    def __init__(self, augment: bool = False, min_scale: float = 0.35, with_target: bool = True):
        super().__init__()
        self.augment, self.min_scale, self.with_target = augment, min_scale, with_target

    def encodes(self, b):  # unannotated: fastai dispatches Transforms on annotations
        "uint8 (N,H,W,3), or (uint8, crop matrices): the crops given (`crop_thetas`) instead of random ones."
        b, theta = b if isinstance(b, (tuple, list)) else (b, None)
        rgb = b.permute(0, 3, 1, 2).float().div_(255)
        if theta is not None:
            rgb = crop(rgb, theta)
        elif self.augment:
            rgb = random_resized_crop(rgb, self.min_scale)
        l, ab = lab_to_model(rgb_to_lab(rgb))
        if l.is_cuda:
            l, ab = l.contiguous(memory_format=torch.channels_last), ab.contiguous(memory_format=torch.channels_last)
        return (l, ab) if self.with_target else (l,)

    def decodes(self, b):
        l, *abs_ = [t.detach().float().cpu() for t in b]
        return (gray_rgb(l), *[model_to_rgb(l, ab) for ab in abs_])


class LabDataLoader(DataLoader):
    """Batches of cached uint8 photos -> (L, ab) on `device` through `ToLab` (augmented when `augment`; (L,) alone
    when `with_target` is false: a test set for `dls.test_dl` and `learn.predict`)."""
    def __init__(self, dataset: CachedPhotos, bs: int = 16, shuffle: bool = False, augment: bool = False,
                 min_scale: float = 0.35, epoch_batches: int | None = None, with_target: bool = True, **kwargs):
        super().__init__(dataset, bs=bs, shuffle=shuffle, **kwargs)
        self.to_lab, self.epoch_batches, self._queue = ToLab(augment, min_scale, with_target), epoch_batches, []
        self.views = None  # a `colorgan.features.FeatureViews` of this dataset: batches of its views, with features

    augment = property(lambda self: self.to_lab.augment)
    min_scale = property(lambda self: self.to_lab.min_scale)
    with_target = property(lambda self: self.to_lab.with_target)

    @property
    def size(self) -> int: return self.dataset.shape[1]

    def __len__(self):
        return self.epoch_batches if self._queued else super().__len__()

    @property
    def _queued(self) -> bool: return bool(self.epoch_batches) and self.shuffle

    def get_idxs(self):
        """With `epoch_batches` (and shuffling: a loader for training), an epoch is that many batches, drawn from a
        shuffled queue of all photos that the next epoch continues: every photo is seen once before any is seen
        twice, however short the epochs. Without shuffling (`get_preds`, `new(shuffle=False)`) every photo in order."""
        if not self._queued:
            return super().get_idxs()
        need = self.epoch_batches * self.bs
        while len(self._queue) < need:
            self._queue += list(self.shuffle_fn(list(range(self.n))))
        idxs, self._queue = self._queue[:need], self._queue[need:]
        return idxs

    def create_item(self, s): return s
    def create_batch(self, idxs):
        "uint8 photos gathered from the cache; to a GPU through pinned memory, without waiting for the copy."
        b = torch.from_numpy(np.ascontiguousarray(self.dataset[np.asarray(idxs)]))
        if self.device is not None and torch.device(self.device).type == "cuda":
            b = b.pin_memory().to(self.device, non_blocking=True)
        return b if self.views is None else (b, *self.views.draw(np.asarray(idxs)))

    def after_batch(self, b) -> tuple:
        "(L, ab) of the batch; with `views`, (L, ab, *the body's features) of one stored view of each photo."
        if not isinstance(b, tuple):
            return self.to_lab(b)
        rgb, theta, *features = b
        return (*self.to_lab((rgb, theta)), *features)

    def new(self, dataset=None, cls=None, **kwargs):
        kwargs = {"augment": self.augment, "min_scale": self.min_scale, "epoch_batches": self.epoch_batches,
                  "with_target": self.with_target, **kwargs}
        return super().new(dataset=dataset, cls=cls, **kwargs)

    def decode_batch(self, b, max_n: int = 9, full: bool = True) -> list[tuple]:
        """(L, ab...) -> one (gray, colour...) tuple of RGB TensorImages (3,H,W) in [0,1] per photo: `ToLab`'s
        decodes, through color.py (gamut-mapped at constant lightness)."""
        images = self.to_lab.decode(tuple(t[:max_n] for t in b))
        return [tuple(TensorImage(img[i]) for img in images) for i in range(len(images[0]))]

    def show_batch(self, b=None, max_n: int = 9, ctxs=None, show: bool = True, **kwargs):
        """gray | colour for `max_n` photos of a batch, on `ctxs` when given; with show=False nothing is drawn and
        the decoded (gray, colour) RGB images come back, as fastai's show_batch does."""
        b = self.one_batch() if b is None else b
        if not show:
            return self.decode_batch(b, max_n)
        return show_columns(b[0], {"gray": None, "colour": b[1] if len(b) > 1 else None}, max_n, ctxs, **kwargs)

    def show_results(self, b, out, max_n: int = 9, ctxs=None, show: bool = True, **kwargs):
        "gray | predicted | real (`Learner.show_results` calls this); `ctxs` and `show` as in `show_batch`."
        l, ab = b
        if not show:
            return self.decode_batch((l, out, ab), max_n)
        return show_columns(l, {"gray": None, "predicted": out, "real": ab}, max_n, ctxs, **kwargs)


class LabDataLoaders(DataLoaders):
    """fastai DataLoaders of (L, ab) batches, with what `learn.predict` and `learn.get_preds(dl=...)` need:
    `test_dl` over PIL images, paths or uint8 arrays (decoded as the training photos were: EXIF applied, centre
    crop at the training size), `decode_batch` back to RGB, and one input (`n_inp`)."""
    n_inp = 1

    def test_dl(self, test_items, rm_type_tfms=None, with_labels: bool = False, bs: int | None = None, **kwargs):
        size, items = self.train.size, list(test_items)
        pixels = np.stack([_decode_item(item, size) for item in items]) if items else np.zeros((0, size, size, 3),
                                                                                                 np.uint8)
        return LabDataLoader(CachedPhotos(pixels), bs=bs or self.valid.bs, shuffle=False, device=self.device,
                             with_target=with_labels)

    def decode_batch(self, b, max_n: int = 9, full: bool = True) -> list[tuple]:
        return self.valid.decode_batch(b, max_n, full)


def _decode_item(item, size: int) -> np.ndarray:
    "A PIL image, a path or a uint8 (H,W,3) array -> uint8 (size,size,3), as `decode_photo` makes training rows."
    if isinstance(item, np.ndarray):
        item = Image.fromarray(item)
    if isinstance(item, (str, os.PathLike)):
        status, arr = decode_photo(item, size)
        if arr is None:
            raise ColorganError(f"{item} is not an image colorgan can read")
        return arr
    return fit_photo(item, size)


def split_indices(n: int, valid_pct: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    "(train, valid) positions into n >= 2 photos: a seeded random `valid_pct` to validate on, at least one each."
    order = np.random.default_rng(seed).permutation(n)
    n_valid = min(max(1, round(n * valid_pct)), n - 1)
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


def _usable(photos: PhotoSet, rows: np.ndarray, keep_gray: bool, what: str, path: Path) -> CachedPhotos:
    "The rows of one decoded folder that are usable (readable, and in colour unless `keep_gray`)."
    rows = np.intersect1d(rows, photos.usable(keep_gray))
    if len(rows) == 0:
        raise ColorganError(f"no usable {what} photos in {path}: {len(photos.files)} found, none readable in colour")
    return CachedPhotos(photos.pixels, rows)


def split_photos(path: Path, size: int, valid_pct: float, seed: int, keep_gray: bool, cache_dir=None,
                 decode_workers: int | None = None) -> tuple[CachedPhotos, CachedPhotos]:
    """train/ and valid/ subfolders when both exist, else a seeded random `valid_pct` of one folder: each folder is
    decoded once (per size) into the cache, and the splits are index arrays into it, so a new seed or valid_pct
    decodes nothing and `evaluate` reads the same cache."""
    if (path / "train").is_dir() and (path / "valid").is_dir():
        sets = [load_photos(find_photos(path / sub), size, cache_dir, decode_workers) for sub in ("train", "valid")]
        report(sets, keep_gray)
        return tuple(_usable(s, np.arange(len(s.files)), keep_gray, what, path)
                     for s, what in zip(sets, ("training", "validation")))
    files = find_photos(path)
    if len(files) < 2:
        raise ColorganError(f"{path} holds {len(files)} photo; training needs at least 2 (one to validate on)")
    photos = load_photos(files, size, cache_dir, decode_workers)
    report([photos], keep_gray)
    train, valid = split_indices(len(files), valid_pct, seed)
    return _usable(photos, train, keep_gray, "training", path), _usable(photos, valid, keep_gray, "validation", path)


def photo_colorfulness(photos: CachedPhotos, chunk: int = 256) -> np.ndarray:
    "Hasler and Suesstrunk's M3 (0-255 scale) of every photo, computed from the cache in chunks."
    out = [colorfulness(torch.from_numpy(np.ascontiguousarray(photos[np.arange(i, min(i + chunk, len(photos)))]))
                        .permute(0, 3, 1, 2).float().div_(255)) for i in range(0, len(photos), chunk)]
    return torch.cat(out).numpy()


def _colourful_enough(photos: CachedPhotos, min_colorfulness: float) -> CachedPhotos:
    "Leave out dull photos (sepia, near-gray, washed out), as DDColor does: they teach the generator to be dull."
    if min_colorfulness <= 0:
        return photos
    scores = photo_colorfulness(photos)
    keep = scores >= min_colorfulness
    if keep.sum() < 2:
        raise ColorganError(f"data.min_colorfulness = {min_colorfulness:g} leaves {int(keep.sum())} of {len(photos)} "
                            f"training photos (the most colourful scores {scores.max(initial=0):.1f}): lower it, or "
                            "set it to 0 to train on all")
    log.info(f"left out {int((~keep).sum())} of {len(photos)} training photos with colourfulness below "
             f"{min_colorfulness:g} (data.min_colorfulness)")
    return CachedPhotos(photos.pixels, photos.index[keep])


def photo_dls(path: str | os.PathLike, size: int = 256, bs: int = 16, valid_pct: float = 0.1, seed: int = 42,
              keep_gray: bool = False, augment: bool = True, min_scale: float = 0.35,
              min_colorfulness: float = 0.0, epoch_batches: int | None = None, cache_dir: str | None = None,
              decode_workers: int | None = None, device=None) -> DataLoaders:
    """A folder of photos -> DataLoaders of (L, ab) batches at `size` px (L (N,1,S,S) and ab (N,2,S,S), both
    scaled to about [-1, 1]). Unreadable files are skipped and gray ones left out, each with a summary line;
    `min_colorfulness` also leaves out dull training photos. `epoch_batches` makes an epoch that many batches
    (validation, checkpoints and sample grids come that often) while every photo is still seen in turn.
    `decode_workers`: processes that decode photos into the cache the first time (default: the CPU count, up to
    16); batches are made in the main process, from the cache."""
    path = Path(path)
    train, valid = split_photos(path, size, valid_pct, seed, keep_gray, cache_dir, decode_workers)
    train = _colourful_enough(train, min_colorfulness)
    if len(train) < 2:
        raise ColorganError(f"{path} has {len(train)} usable training photo; BatchNorm needs batches of 2 or more")
    log.info(f"{len(train)} training and {len(valid)} validation photos at {size} px")
    device = resolve_device(device)
    train_dl = LabDataLoader(train, bs=min(bs, len(train)), shuffle=True, drop_last=True, augment=augment,
                             min_scale=min_scale, epoch_batches=epoch_batches, device=device)
    valid_dl = LabDataLoader(valid, bs=bs, shuffle=False, device=device)
    return LabDataLoaders(train_dl, valid_dl, path=path, device=device)
