"""Training images/s of both stages with colorgan's pipeline and with the seed projects' pipeline, and the model
FLOPs utilisation, in one run on one machine.

    python benchmarks/train_throughput.py [PHOTOS] [--size 256] [--bs 32] [--steps 30]
    python benchmarks/train_throughput.py --tiny          # CPU-sized smoke run, as CI runs it

colorgan: photos decoded once into the uint8 cache, augmentation and Lab on the device, bf16 autocast,
channels_last, cudnn benchmark, fused AdamW (on a GPU). Seed pipeline, as their tutorial sets it up: per-image
JPEG decode, resize and skimage rgb2lab in DataLoader workers (4, then 16), fp32, the same model.
MFU = FLOPs per image (torch's FlopCounterMode over real training steps) x images/s / peak, where the peak is the
bf16 (GPU) or fp32 (CPU) matmul rate this run measures with a large matrix product.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import colorgan  # noqa: F401  (first: it quiets a deprecation warning fastai triggers at import)
from fastai.callback.core import Callback, CancelFitException
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from colorgan.data import photo_dls
from colorgan.gan import gan_learner
from colorgan.learner import pretrain_learner
from colorgan.models import build_critic, build_generator
from colorgan.photos import find_photos
from colorgan.samples import write_sample_photos

from data_throughput import SeedDataset


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Throughput(Callback):
    "Times `steps` training batches after `warmup` ones (one host sync at each end), then stops the fit."
    order = 100

    def __init__(self, warmup: int, steps: int): self.warmup, self.steps = warmup, steps
    def before_fit(self): self.n, self.images, self.start = 0, 0, None
    def before_validate(self): raise CancelFitException

    def before_batch(self):
        if self.n == self.warmup:
            _sync(self.dls.device)
            self.start = time.perf_counter()

    def after_batch(self):
        if self.start is not None:
            self.images += self.yb[0].shape[0]
        self.n += 1
        if self.n == self.warmup + self.steps:
            _sync(self.dls.device)
            self.elapsed = time.perf_counter() - self.start
            raise CancelFitException

    @property
    def rate(self): return self.images / self.elapsed


def measure(learn, warmup: int, steps: int) -> float:
    cb = Throughput(warmup, steps)
    with learn.no_logging(), learn.no_bar():
        learn.fit(10 ** 6, 1e-4, cbs=cb)
    return cb.rate


def flops_per_image(learn, steps: int = 2) -> float:
    "FLOPs of real training steps (forward, backward; both nets in stage two) per image."
    counter = FlopCounterMode(display=False)
    cb = Throughput(0, steps)
    with counter, learn.no_logging(), learn.no_bar():
        learn.fit(10 ** 6, 1e-4, cbs=cb)
    return counter.get_total_flops() / cb.images


def matmul_peak(device: torch.device) -> tuple[float, str]:
    "FLOP/s of a large matrix product: bf16 on a GPU, fp32 on a CPU."
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps, start = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start), f"{str(dtype).split('.')[-1]} {n}x{n} matmul"


def seed_dls(files, size, bs, workers, device):
    train = DataLoader(SeedDataset(files, size), bs=bs, shuffle=True, drop_last=True, num_workers=workers,
                       device=device, persistent_workers=workers > 0)
    return DataLoaders(train, DataLoader(SeedDataset(files[:bs], size), bs=bs, device=device), device=device)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("photos", nargs="?")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, nargs="+", default=[4, 16])
    p.add_argument("--tiny", action="store_true", help="64 px, batches of 4, 3 steps, 2 workers: a CPU smoke run")
    args = p.parse_args()
    if args.tiny:
        args.size, args.bs, args.steps, args.warmup, args.workers = 64, 4, 3, 1, [2]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmp = tempfile.TemporaryDirectory()
    folder = Path(args.photos) if args.photos else Path(tmp.name) / "photos"
    if not args.photos:
        write_sample_photos(folder)
    files = find_photos(folder)
    dls = photo_dls(folder, size=args.size, bs=args.bs, valid_pct=0.02, cache_dir=Path(tmp.name) / "cache",
                    device=device)
    peak, peak_what = matmul_peak(device)

    def stage_one(d, **kw):
        return pretrain_learner(d, pretrained=False, **kw)

    def stage_two(d, **kw):
        return gan_learner(d, build_generator(pretrained=False, img_size=args.size), build_critic(), **kw)

    rows = []
    for stage, make in (("stage one", stage_one), ("stage two", stage_two)):
        fpi = flops_per_image(make(dls))
        ours = measure(make(dls), args.warmup, args.steps)
        rows.append((stage, "colorgan", ours, fpi * ours / peak, 1.0))
        for w in args.workers:
            theirs = measure(make(seed_dls(files, args.size, args.bs, w, device), precision="fp32", fused_adam=False),
                             args.warmup, args.steps)
            rows.append((stage, f"seed, {w} workers, fp32", theirs, fpi * theirs / peak, ours / theirs))
        rows.append((stage, "FLOPs per image", fpi, None, None))

    print(f"\n{len(files)} photos at {args.size} px, batch {args.bs}, {args.steps} timed steps after {args.warmup}, "
          f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
          f"peak {peak / 1e12:.2f} TFLOP/s ({peak_what})")
    print("| stage | pipeline | images/s | MFU | colorgan / this |\n|---|---|---:|---:|---:|")
    for stage, name, rate, mfu, ratio in rows:
        if name == "FLOPs per image":
            print(f"| {stage} | FLOPs per image (train step) | {rate / 1e9:.2f} G | | |")
        else:
            print(f"| {stage} | {name} | {rate:.1f} | {mfu:.1%} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
