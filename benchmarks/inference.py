"""Per-image latency and peak memory of `Colorizer` (full resolution out) for a 512 px and a 4000 px photo at the
default render size, on CPU, and images/s on the GPU when there is one.

    python benchmarks/inference.py [MODEL] [--repeats 3]

Without MODEL an untrained ResNet18 generator at 256 px stands in (speed does not depend on the weights).
Each case runs in its own process so its peak resident memory (VmHWM) is its own.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_case(model: str, long_side: int, device: str, repeats: int) -> dict:
    import torch
    from PIL import Image

    from colorgan.inference import Colorizer
    colorizer = Colorizer.from_artifact(model, device=device)
    h, w = long_side * 2 // 3, long_side
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    colorizer(img.resize((64, 64)))  # warm up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base, times = _rss_mb("VmRSS"), []
    for _ in range(repeats):
        start = time.perf_counter()
        colorizer(img)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    out = {"photo": f"{w}x{h}", "device": device, "render_size": colorizer.render_size,
           "latency_s": float(np.median(times)), "peak_rss_mb": _rss_mb("VmHWM"), "rss_before_mb": base}
    if device == "cuda":
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def gpu_throughput(model: str, n: int = 64, bs: int = 16) -> float:
    "Images/s of 512 px photos on the GPU, in batches of `bs` photos of one shape."
    import torch
    from PIL import Image

    from colorgan.inference import Colorizer
    colorizer = Colorizer.from_artifact(model, device="cuda")
    imgs = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (341, 512, 3), dtype=np.uint8)) for i in range(bs)]
    colorizer.colorize(imgs)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n // bs):
        colorizer.colorize(imgs)
    torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--case", type=int, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.model, args.case, args.device, args.repeats)))
        return
    tmp = tempfile.TemporaryDirectory()
    model = args.model
    if model is None:
        from colorgan.artifacts import generator_meta, save_generator
        from colorgan.models import build_generator
        model = str(Path(tmp.name) / "generator.pth")
        save_generator(build_generator(pretrained=False, img_size=256), model,
                       generator_meta({"arch": "resnet18"}, 256, "pretrain", {}))
    import torch
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for side in (512, 4000):
            cmd = [sys.executable, __file__, model, "--case", str(side), "--device", device, "--repeats", str(args.repeats)]
            rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
    print("\n| photo | device | render size | latency (s) | peak RSS (MB) | RSS before (MB) | GPU peak (MB) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        gpu = f"{r['gpu_peak_mb']:.0f}" if "gpu_peak_mb" in r else "-"
        print(f"| {r['photo']} | {r['device']} | {r['render_size']} | {r['latency_s']:.3f} | {r['peak_rss_mb']:.0f} "
              f"| {r['rss_before_mb']:.0f} | {gpu} |")
    if "cuda" in devices:
        print(f"\nGPU throughput, 512x341 photos in batches of 16: {gpu_throughput(model):.1f} images/s")


if __name__ == "__main__":
    main()
