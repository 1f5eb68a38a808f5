"""CPU inference, end to end, beside an older colorgan in the same run: a 12 MP photo (decode, colorize, encode),
a folder of 100 photos of 1 MP (photos/s), peak memory over the loaded model; then the network's engines side by
side (torch fp32, channels-last, bf16, onnxruntime) with their largest ab difference from plain fp32.

    python benchmarks/inference.py [MODEL] [--baseline REF] [--render-size 256] [--repeats 3] [--folder 100]

MODEL: a run folder or generator.pth (a trained one gives realistic colours, and so a realistic share of colours
outside sRGB to map in); without it an untrained ResNet18 generator stands in. --baseline: a git commit of this
repository (e.g. 8c2d154, the path before gamut mapping and the faster lightness), checked out in a temporary
worktree and timed on the same photos. Each case runs in its own process so its peak RSS (VmHWM) is its own.
The photos: scikit-image's, upscaled, saved as JPEG (quality 90); outputs are JPEG (quality 95).
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_photos(folder: Path, n_folder: int) -> None:
    "photo12.jpg (4000x3000) and folder/NNN.jpg (1224x816, about 1 MP), from scikit-image's photos."
    import skimage.data
    from PIL import Image
    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    Image.fromarray(sources[0]).resize((4000, 3000), Image.BICUBIC).save(folder / "photo12.jpg", quality=90)
    (folder / "folder").mkdir()
    for i in range(n_folder):
        img = Image.fromarray(sources[i % len(sources)]).rotate(i * 7 % 30, Image.BICUBIC)
        img.resize((1224, 816), Image.BICUBIC).save(folder / "folder" / f"{i:03d}.jpg", quality=90)


def case_photo(model: str, photos: Path, render_size: int, repeats: int) -> dict:
    from PIL import Image

    from colorgan.inference import Colorizer
    colorizer = Colorizer.from_artifact(model, render_size, device="cpu")
    colorizer(Image.new("RGB", (64, 64)))  # warm up
    base, times = _rss_mb("VmRSS"), []
    for _ in range(repeats):
        start = time.perf_counter()
        with Image.open(photos / "photo12.jpg") as img:
            colorizer(img).save(photos / "out12.jpg", quality=95)
        times.append(time.perf_counter() - start)
    import colorgan
    return {"latency_s": float(np.median(times)), "peak_over_model_mb": _rss_mb("VmHWM") - base,
            "module": colorgan.__file__}


def case_folder(model: str, photos: Path, render_size: int) -> dict:
    from PIL import Image

    from colorgan.colorize import colorize_paths
    from colorgan.inference import Colorizer
    colorizer = Colorizer.from_artifact(model, render_size, device="cpu")
    colorizer(Image.new("RGB", (64, 64)))
    out = Path(tempfile.mkdtemp(dir=photos))
    start = time.perf_counter()
    result = colorize_paths(colorizer, [photos / "folder"], out)
    seconds = time.perf_counter() - start
    return {"photos_per_s": len(result.written) / seconds, "written": len(result.written)}


def case_engines(model: str, render_size: int, repeats: int) -> list[dict]:
    "The network alone on a 3:2 photo's render shape, four ways; max |ab| against plain fp32, in CIELAB units."
    import torch

    from colorgan.artifacts import load_generator
    from colorgan.export import LabGenerator
    from colorgan.inference import render_shape
    net = LabGenerator(load_generator(model)[0]).eval()
    x = torch.rand(1, 1, *render_shape(3000, 4000, render_size), generator=torch.Generator().manual_seed(0)) * 100

    def timed(fn):
        fn()
        times = []
        for _ in range(max(repeats, 5)):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return float(np.median(times)), out
    def row(name, seconds, out):
        return {"engine": name, "latency_s": seconds, "max_ab_diff": float(np.abs(np.asarray(out) - ref).max())}
    with torch.inference_mode():
        ref = net(x).numpy()
        rows = [row("torch fp32", *timed(lambda: net(x)))]
        net_cl, x_cl = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        rows.append(row("torch fp32 channels-last", *timed(lambda: net_cl(x_cl))))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rows.append(row("torch bf16 channels-last", *timed(lambda: net_cl(x_cl).float())))
    rows.append(_onnxruntime_row(net.to(memory_format=torch.contiguous_format), x, row, timed))
    return rows


def _onnxruntime_row(net, x, row, timed) -> dict:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"engine": "onnxruntime (not installed)", "latency_s": float("nan"), "max_ab_diff": float("nan")}
    import torch
    path = Path(tempfile.mkdtemp()) / "g.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["L"], output_names=["ab"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return row("onnxruntime", *timed(lambda: session.run(None, {"L": x.numpy()})[0]))


def run_case(args, case: str, pythonpath: Path) -> dict | list:
    cmd = [sys.executable, __file__, args.model, "--case", case, "--photos", str(args.photos),
           "--render-size", str(args.render_size), "--repeats", str(args.repeats)]
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=pythonpath)
    return json.loads(done.stdout.rsplit("RESULT ", 1)[1])  # after any progress bar


def baseline_tree(ref: str, where: Path) -> Path:
    tree = where / f"colorgan-{ref}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref], check=True,
                   capture_output=True)
    return tree


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?")
    p.add_argument("--baseline", help="a git commit to time beside this checkout")
    p.add_argument("--render-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--folder", type=int, default=100, help="photos in the folder case")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--photos", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        cases = {"photo": lambda: case_photo(args.model, args.photos, args.render_size, args.repeats),
                 "folder": lambda: case_folder(args.model, args.photos, args.render_size),
                 "engines": lambda: case_engines(args.model, args.render_size, args.repeats)}
        print("RESULT " + json.dumps(cases[args.case]()))
        return
    tmp = Path(tempfile.mkdtemp())
    if args.model is None:
        from colorgan.artifacts import generator_meta, save_generator
        from colorgan.models import build_generator
        args.model = str(tmp / "generator.pth")
        save_generator(build_generator(pretrained=False, img_size=256), args.model,
                       generator_meta({"arch": "resnet18"}, 256, "pretrain", {}))
    args.model = str(Path(args.model).resolve())
    args.photos = tmp / "photos"
    args.photos.mkdir()
    write_photos(args.photos, args.folder)
    trees = [("this checkout", ROOT)] + ([(args.baseline, baseline_tree(args.baseline, tmp))] if args.baseline else [])
    try:
        report(args, trees)
    finally:
        for name, tree in trees[1:]:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)


def report(args, trees) -> None:
    print(f"\nCPU, {os.cpu_count()} cores, render size {args.render_size}, JPEG in and out")
    print("\n| colorgan | 12 MP photo, end to end (s) | peak over the model (MB) | 100 photos of 1 MP (photos/s) |")
    print("|---|---:|---:|---:|")
    for name, tree in trees:
        photo, folder = run_case(args, "photo", tree), run_case(args, "folder", tree)
        assert photo["module"].startswith(str(tree)), f"{name} ran {photo['module']}"
        print(f"| {name} | {photo['latency_s']:.2f} | {photo['peak_over_model_mb']:.0f} "
              f"| {folder['photos_per_s']:.2f} |", flush=True)
    print("\n| network engine (this checkout) | latency at render size (s) | max abs ab diff vs fp32 |")
    print("|---|---:|---:|")
    for row in run_case(args, "engines", ROOT):
        print(f"| {row['engine']} | {row['latency_s']:.3f} | {row['max_ab_diff']:.2g} |")


if __name__ == "__main__":
    main()
