"""CPU inference, end to end. First what a 12 MP photo costs whatever the model paints: in one process, the best
case (the network's output replaced by gray), the worst (by the bounds of ab, a corner of the ab square at random
pixel by pixel, every colour far outside sRGB) and the model as trained, each with the recombination compiled
(`fused=True`, what a long folder, a film or the server get once they have done 500 MP) and uncompiled, beside Pillow's
decode + encode of the same JPEG (the floor no colorizer beats) and the network's own time at the render size,
the cases taking turns `--repeats` times (a machine whose speed drifts slows them all alike), medians reported;
where the time goes, step by step; the machine's CPU flags. Then beside an older colorgan in the same run: the 12 MP
photo, a folder of 100 photos of 1 MP (photos/s), peak memory over the loaded model; then the network's engines
side by side (torch fp32, channels-last, bf16, onnxruntime) with their largest ab difference from plain fp32.

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


STEPS = ("decode", "lightness", "downsample L", "network", "recombine", "encode")


def case_cost(model: str, photos: Path, render_size: int, repeats: int) -> dict:
    "Per case (and Pillow's floor): the median over `repeats` of each step's seconds on the 12 MP photo."
    import io

    from PIL import Image

    from colorgan.inference import Colorizer
    src, result = photos / "photo12.jpg", {}

    def pillow():
        with Image.open(src) as img:
            start = time.perf_counter()
            img.load()
            decoded = time.perf_counter()
            img.save(io.BytesIO(), format="JPEG", quality=95)
        return {"decode": decoded - start, "encode": time.perf_counter() - decoded}
    colorizers = {}
    for fused in (True, False):
        colorizers["fused" if fused else "eager"] = colorizer = Colorizer.from_artifact(model, render_size, device="cpu")
        colorizer.fused, result["engine"] = fused, colorizer.engine
    runs = {}
    for _ in range(repeats + 1):  # the cases take turns, so that a slow minute of the machine falls on all
        runs.setdefault("pillow", []).append(pillow())
        for mode, colorizer in colorizers.items():
            for case in ("best", "worst", "trained"):
                runs.setdefault(f"{case} {mode}", []).append(_timed_photo(colorizer, src, case))
    return {**result, **{name: _median_steps(timed[1:]) for name, timed in runs.items()}}  # the first warms up


def _timed_photo(colorizer, src: Path, case: str) -> dict:
    "One 12 MP photo through `colorizer`, each step timed; the network's ab replaced as `case` says."
    import io

    import torch
    from PIL import Image

    from colorgan.color import denorm_ab
    from colorgan.models import AB_RANGE
    steps, clock = {}, [time.perf_counter()]

    def lap(name):
        clock.append(time.perf_counter())
        steps[name] = clock[-1] - clock[-2]
    with Image.open(src) as img:
        img.load()
        lap("decode")
        l = colorizer.lightness(img)
    lap("lightness")
    small = colorizer.render_l(l)
    lap("downsample L")
    ab = colorizer.predict_small([small])[0]
    lap("network")
    if case == "best":
        ab = torch.zeros_like(ab)
    elif case == "worst":
        corner = torch.randint(0, 2, ab.shape, generator=torch.Generator().manual_seed(0)).float()
        ab = denorm_ab(corner * (AB_RANGE[1] - AB_RANGE[0]) + AB_RANGE[0])
    out = colorizer.combine(l, ab)
    lap("recombine")
    Image.fromarray(out).save(io.BytesIO(), format="JPEG", quality=95)
    lap("encode")
    return steps


def _median_steps(runs: list[dict]) -> dict:
    steps = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    return {**steps, "total": float(np.median([sum(r.values()) for r in runs]))}


def cpu_units() -> str:
    "The CPU's model and the vector and matrix units that decide its speed here."
    from colorgan.device import cpu_flags
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    units = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in cpu_flags()]
    return f"{name}, {os.cpu_count()} cores; {' '.join(units) or 'no AVX2'}"


def report_cost(args) -> None:
    cost = run_case(args, "cost", ROOT)
    pillow, network = cost["pillow"]["total"], cost["best fused"]["network"]
    floor = pillow + network
    print(f"\n{cpu_units()}; engine auto = {cost['engine']}; render size {args.render_size}")
    print("\n| 12 MP photo, JPEG in and out | recombination | end to end (s) | / best | / (Pillow + network) |")
    print("|---|---|---:|---:|---:|")
    print(f"| Pillow decode + encode alone | | {pillow:.3f} | | |")
    print(f"| the network alone at the render size | | {network:.3f} | | |")
    for mode in ("fused", "eager"):
        best = cost[f"best {mode}"]["total"]
        for case in ("best", "worst", "trained"):
            total = cost[f"{case} {mode}"]["total"]
            print(f"| {case} | {mode} | {total:.3f} | {total / best:.2f}x | {total / floor:.2f}x |")
    print("\n| seconds per step | " + " | ".join(STEPS) + " |")
    print("|---|" + "---:|" * len(STEPS))
    print("| Pillow | " + " | ".join(f"{cost['pillow'].get(k, float('nan')):.3f}" for k in STEPS) + " |")
    for key in (k for k in cost if k not in ("pillow", "engine")):
        print(f"| {key} | " + " | ".join(f"{cost[key][k]:.3f}" for k in STEPS) + " |")


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
                 "cost": lambda: case_cost(args.model, args.photos, args.render_size, args.repeats),
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
    report_cost(args)
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
