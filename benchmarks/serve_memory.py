"""What `colorgan serve` holds in memory over many requests: 20 uploads of a 2048x1536 photo colorized at render
size 1024 by the torch engine (the engine of a GPU server; on a CPU `auto` takes onnxruntime), the process's
resident memory after each request and its peak, beside an older colorgan in the same run. Each tree runs in its
own process, so each peak is its own.

    python benchmarks/serve_memory.py [MODEL] [--baseline REF] [--requests 20] [--render-size 1024]

MODEL: a run folder or generator.pth; without it an untrained ResNet18 generator stands in (the memory a request
holds depends on the network's size, not on what it learnt). --baseline: a git commit of this repository, checked
out in a temporary worktree.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import _rss_mb  # noqa: E402  (benchmarks/inference.py: the same /proc/self/status reader)


def measure(model: str, requests: int, render_size: int, trace: str | None = None) -> dict:
    """In this process: the app's memory before the first request, after each, and its peak (MB); each reading is
    also appended to `trace` as it is taken, so a run the kernel kills for memory still tells how far it got."""
    import skimage.data
    from fastapi.testclient import TestClient
    from PIL import Image

    from colorgan.serve import create_app
    photo = Image.fromarray(skimage.data.astronaut()).resize((2048, 1536), Image.BICUBIC)
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=90)
    client = TestClient(create_app(model, device="cpu", engine="torch"))
    client.post("/colorize", files={"image": ("p.jpg", buf.getvalue())}, data={"render_size": "64"})  # warm up
    start, after = _rss_mb("VmRSS"), []
    for _ in range(requests):
        r = client.post("/colorize", files={"image": ("p.jpg", buf.getvalue())},
                        data={"render_size": str(render_size)})
        assert r.status_code == 200, r.text
        after.append(_rss_mb("VmRSS"))
        if trace:
            with open(trace, "a") as f:
                f.write(f"{after[-1]:.0f}\n")
    return {"start_mb": start, "after_mb": after, "peak_mb": _rss_mb("VmHWM"),
            "growth_mb": after[-1] - after[0]}


def _run(tree: Path, model: str, requests: int, render_size: int) -> dict:
    "`measure` in a process of its own on `tree`'s colorgan; a run killed for memory (SIGKILL) gives what it read."
    env = {**os.environ, "PYTHONPATH": str(tree)}
    trace = tree / ".serve-memory-trace"
    trace.unlink(missing_ok=True)
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import serve_memory; "
            f"print(json.dumps(serve_memory.measure({model!r}, {requests}, {render_size}, {str(trace)!r})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True)
    read = [float(v) for v in trace.read_text().split()] if trace.exists() else []
    trace.unlink(missing_ok=True)
    if out.returncode == -9 and read:
        return {"start_mb": float("nan"), "after_mb": read, "peak_mb": max(read), "killed": True,
                "growth_mb": read[-1] - read[0]}
    if out.returncode:
        raise SystemExit(f"the run in {tree} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--baseline", help="a git commit to measure beside this tree")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--render-size", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        model = args.model
        if model is None:
            sys.path.insert(0, str(ROOT))
            from colorgan.artifacts import save_generator
            from colorgan.models import build_generator
            model = str(save_generator(build_generator(pretrained=False, img_size=256), work / "generator.pth"))
        trees = [("this tree", ROOT)]
        if args.baseline:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(work / "base"),
                            args.baseline], check=True, capture_output=True)
            trees.append((f"baseline {args.baseline}", work / "base"))
        try:
            rows = [(name, _run(tree, model, args.requests, args.render_size)) for name, tree in trees]
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "base")],
                               capture_output=True)
    print(f"serve, torch engine on the CPU: {args.requests} uploads of 2048x1536 at render {args.render_size}")
    print("| tree | RSS before (MB) | after request 1 | after the last | requests done | growth | peak |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        done = f"{len(r['after_mb'])}" + (" (killed: out of memory)" if r.get("killed") else "")
        print(f"| {name} | {r['start_mb']:.0f} | {r['after_mb'][0]:.0f} | {r['after_mb'][-1]:.0f} | {done} | "
              f"{r['growth_mb']:+.0f} | {r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
