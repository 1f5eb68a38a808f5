"""Images/s of colorgan's data pipeline beside the seed projects' way, on the same photos, in one run.

colorgan: decode once into a uint8 cache (the first epoch pays for it), then per batch: uint8 -> device ->
random resized crop + flip -> Lab, all batched. Seed projects: a torch Dataset that per image opens the JPEG,
resizes and flips with PIL and converts with skimage's rgb2lab, in DataLoader workers.

    python benchmarks/data_throughput.py [PHOTOS] [--size 256] [--bs 32] [--workers 4] [--epochs 2]

Without PHOTOS it writes scikit-image's sample photos to a temporary folder.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.color import rgb2lab
from torch.utils.data import DataLoader, Dataset

from colorgan.data import photo_dls
from colorgan.photos import find_photos
from colorgan.samples import write_sample_photos


class SeedDataset(Dataset):
    "The seed notebooks' dataset: PIL decode, resize, flip, skimage rgb2lab, per image."
    def __init__(self, files, size): self.files, self.size = files, size
    def __len__(self): return len(self.files)

    def __getitem__(self, i):
        img = Image.open(self.files[i]).convert("RGB").resize((self.size, self.size), Image.BICUBIC)
        if np.random.rand() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        lab = rgb2lab(np.array(img)).astype("float32")
        lab = torch.from_numpy(lab).permute(2, 0, 1)
        return lab[[0]] / 50.0 - 1.0, lab[[1, 2]] / 110.0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_epochs(batches, n_images, epochs, device):
    "[images/s of each epoch]; every batch is moved to `device` and waited for."
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        for l, ab in batches():
            l, ab = l.to(device, non_blocking=True), ab.to(device, non_blocking=True)
        _sync(device)
        rates.append(n_images / (time.perf_counter() - start))
    return rates


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("photos", nargs="?")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="use only the first N photos")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmp = tempfile.TemporaryDirectory()
    folder = Path(args.photos) if args.photos else Path(tmp.name) / "photos"
    if not args.photos:
        write_sample_photos(folder)
    files = find_photos(folder)[: args.limit or None]
    if args.limit:
        folder = Path(tmp.name) / "subset"
        folder.mkdir()
        for f in files:
            (folder / f.name).symlink_to(f.resolve())
    cache = Path(tmp.name) / "cache"

    rows = []
    start = time.perf_counter()
    dls = photo_dls(folder, size=args.size, bs=args.bs, valid_pct=0.01, cache_dir=cache, device=device)
    build = time.perf_counter() - start
    n = len(dls.train) * dls.train.bs
    ours = time_epochs(lambda: dls.train, n, args.epochs, device)
    rows.append(("colorgan: decode once to cache (first run)", len(files) / build))
    rows.append(("colorgan: epochs from cache, aug + Lab on " + device.type, float(np.mean(ours))))
    seed = DataLoader(SeedDataset(files, args.size), batch_size=args.bs, shuffle=True, drop_last=True,
                      num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    n_seed = len(seed) * args.bs
    theirs = time_epochs(lambda: seed, n_seed, args.epochs, device)
    rows.append((f"seed: PIL + skimage rgb2lab per image, {args.workers} workers", float(np.mean(theirs))))

    print(f"\n{len(files)} photos at {args.size} px, batch {args.bs}, {args.epochs} epochs, device {device}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"| {'pipeline':<60} | {'images/s':>9} |\n|{'-' * 62}|{'-' * 11}|")
    for name, rate in rows:
        print(f"| {name:<60} | {rate:>9.1f} |")
    print(f"\nepochs from cache vs seed pipeline: {rows[1][1] / rows[2][1]:.1f}x")


if __name__ == "__main__":
    main()
