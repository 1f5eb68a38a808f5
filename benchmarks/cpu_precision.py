"""Stage one on a CPU in fp32 and in bf16 autocast, in one run: images/s of the training step and what the same
short schedule reaches on the validation photos, so `precision=auto` on a CPU can be chosen by measurement.

    python benchmarks/cpu_precision.py PHOTOS [--recipe recipes/cpu.toml] [--photos 640] [--epochs 2]

PHOTOS: a folder with train/ and valid/ (as ../shared/data). The first `--photos` of train/ (sorted) and all of
valid/ are linked into a temporary folder; each precision trains the recipe for `--epochs` from the same seed in
its own process (its own warm-up, nothing shared). images/s: training photos over the epochs' training time
(history.csv's time column includes validation, so it is timed here by a callback). The CPU's flags are printed:
bf16 autocast is fast where the CPU has bf16 units (AVX512_BF16, AMX) and emulated, slow, elsewhere. On a CPU with
them, `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2` before the command approximates one without (the caps are
printed beside the flags; docs/performance.md).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def link_subset(photos: Path, n: int, where: Path) -> Path:
    for split, count in (("train", n), ("valid", None)):
        (where / split).mkdir(parents=True)
        for src in sorted((photos / split).iterdir())[:count]:
            (where / split / src.name).symlink_to(src.resolve())
    return where


def case(data: str, recipe: str, precision: str, epochs: int) -> dict:
    import torch
    from fastai.callback.core import Callback

    from colorgan.train import pretrain

    class TrainClock(Callback):
        order = -100
        seconds, photos = 0.0, 0

        def before_train(self): self.start = time.perf_counter()
        def after_batch(self):
            if self.training:
                self.photos += self.xb[0].shape[0]
        def after_train(self): self.seconds += time.perf_counter() - self.start
    torch.manual_seed(0)
    clock = TrainClock()
    from colorgan import learner as colorgan_learner
    build = colorgan_learner.pretrain_learner

    def with_clock(*args, **kwargs):
        learn = build(*args, **kwargs)
        learn.add_cb(clock)
        return learn
    import colorgan.train as train
    train.pretrain_learner = with_clock
    out = Path(tempfile.mkdtemp()) / "run"
    learn = pretrain(data, out, recipe=recipe, overrides=[f"learner.precision={precision}", f"fit.n_epoch={epochs}"])
    names, values = learn.recorder.metric_names[1:-1], learn.recorder.values[-1]
    return {"images_per_s": clock.photos / clock.seconds, **{str(k): float(v) for k, v in zip(names, values)}}


def cpu_units() -> str:
    "The CPU's vector and bf16 units, and the kernel caps that hide some of them (ONEDNN_MAX_CPU_ISA, ...)."
    from colorgan.device import cpu_flags
    units = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags()) or "no AVX2"
    caps = [f"{k}={os.environ[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if os.environ.get(k)]
    return units + (f" (kernels capped: {' '.join(caps)})" if caps else "")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("photos", type=Path)
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "cpu.toml"))
    p.add_argument("--photos-n", "--photos", dest="n", type=int, default=640)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print("RESULT " + json.dumps(case(str(args.photos), args.recipe, args.case, args.epochs)))
        return
    data = link_subset(args.photos, args.n, Path(tempfile.mkdtemp()) / "photos")
    rows = {}
    for precision in ("fp32", "bf16"):
        done = subprocess.run([sys.executable, __file__, str(data), "--recipe", args.recipe, "--epochs",
                               str(args.epochs), "--case", precision], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        if done.returncode:
            sys.exit(f"{precision} failed:\n{done.stderr[-3000:]}")
        rows[precision] = json.loads(done.stdout.rsplit("RESULT ", 1)[1])
    keys = [k for k in rows["fp32"] if k != "images_per_s"]
    print(f"\nCPU: {os.cpu_count()} cores, {cpu_units()}; {Path(args.recipe).name}, {args.n} photos, "
          f"{args.epochs} epochs, validated on all of valid/")
    print("\n| precision | training images/s | " + " | ".join(keys) + " |")
    print("|---|---:|" + "---:|" * len(keys))
    for precision, row in rows.items():
        print(f"| {precision} | {row['images_per_s']:.1f} | " + " | ".join(f"{row[k]:.4g}" for k in keys) + " |")
    print(f"\nbf16 / fp32 images/s: {rows['bf16']['images_per_s'] / rows['fp32']['images_per_s']:.2f}x")


if __name__ == "__main__":
    main()
