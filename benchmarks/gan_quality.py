"""Does stage two beat stage one where it counts? Train stage one, then stage two, on a photo folder, then score gray,
stage one and stage two on a held-out folder with `colorgan evaluate` and print one table.

    python benchmarks/gan_quality.py ../shared/data --out runs/gan-quality            # both stages, default recipes
    python benchmarks/gan_quality.py ../shared/data --generator runs/s1 --set gan.lambda_l1=50 --out runs/x
    python benchmarks/gan_quality.py ../shared/data --minutes 20 --out runs/q20       # both stages in 20 minutes
    python benchmarks/gan_quality.py ../shared/data --threads 1 ...                   # one core per system

The budget is `--minutes` (wall clock, both stages together: each stage's `--minutes`, stage one taking
`--stage-one-share` of it), or else the recipes' epochs; measured wall and core minutes (wall x threads) per stage
are printed and kept in OUT/gan_quality.json.
It also writes OUT/grid.png: gray | stage one | stage two | real for eight holdout photos.
PHOTOS is split as `colorgan pretrain` splits it (its train/ and valid/ subfolders when it has them); the table
scores the photos of --holdout (default PHOTOS/valid), which must not be among the training photos.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS = ("psnr", "ssim", "ciede2000", "colorfulness", "colorfulness_real", "delta_cf", "false_color",
        "wrong_hue", "lightness_drift", "tint_gain")


def _timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return (time.perf_counter() - start) / 60


def _split(total: float | None, share: float, stage_two_only: bool) -> tuple[float | None, float | None]:
    "Each stage's minutes of a budget for both (all of it to stage two when stage one is given)."
    if total is None:
        return (None, None)
    if not 0 < share < 1:
        raise SystemExit(f"--stage-one-share must be between 0 and 1, not {share}")
    return (None, total) if stage_two_only else (total * share, total * (1 - share))


def render_shift(model, holdout: str, size: int = 256) -> dict:
    """Does the colour depend on the render size? Mean chroma (CIELAB) of the holdout photos colorized at the
    model's training size and at twice it, and the mean per-pixel |chroma difference| between the two."""
    import numpy as np
    import torch

    from colorgan.color import rgb_to_lab
    from colorgan.inference import Colorizer
    from colorgan.photos import find_photos, load_photos
    photos = load_photos(find_photos(holdout), size)
    real = torch.from_numpy(np.ascontiguousarray(photos.pixels[photos.usable()])).permute(0, 3, 1, 2).float() / 255
    lightness = list(rgb_to_lab(real)[:, :1].split(1))
    base = Colorizer.from_artifact(model)
    chroma = {}
    for render in (base.render_size, 2 * base.render_size):
        colorizer = Colorizer.from_artifact(model, render_size=render)
        ab = [torch.nn.functional.interpolate(a, size=(size, size), mode="bilinear", align_corners=False)
              for a in colorizer.predict_ab(lightness)]
        chroma[render] = torch.cat(ab).norm(dim=1)
    (c1, c2) = chroma.values()
    return {"render": list(chroma), "chroma": [c1.mean().item(), c2.mean().item()],
            "mean_abs_diff": (c1 - c2).abs().mean().item()}


def comparison_grid(models: list, holdout: str, path: Path, n: int = 8, size: int = 96) -> None:
    "gray | each model | real for the first `n` holdout photos, as a small PNG (the docs' picture)."
    import numpy as np
    import torch

    from colorgan.color import gray_rgb, norm_l, rgb_to_lab
    from colorgan.evaluate import _colorize_batch
    from colorgan.inference import Colorizer
    from colorgan.photos import find_photos, load_photos
    from colorgan.show import grid_image
    photos = load_photos(find_photos(holdout), size)
    real = torch.from_numpy(np.ascontiguousarray(photos.pixels[photos.usable()[:n]])).permute(0, 3, 1, 2).float()
    real = real / 255
    columns = [gray_rgb(norm_l(rgb_to_lab(real)[:, :1]))]
    columns += [_colorize_batch(Colorizer.from_artifact(m), real) for m in models]
    titles = ["gray", *[Path(m).name for m in models], "real"]
    grid_image([*columns, real], max_n=n, titles=titles).save(path, format="PNG", optimize=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", help="photo folder to train on")
    p.add_argument("--holdout", help="folder of colour photos to score (default: PHOTOS/valid)")
    p.add_argument("--out", required=True, help="folder for both runs and the evaluations")
    p.add_argument("--recipe", default=str(HERE.parent / "recipes" / "cpu.toml"), help="stage one's recipe")
    p.add_argument("--gan-recipe", default=str(HERE.parent / "recipes" / "cpu-gan.toml"), help="stage two's recipe")
    p.add_argument("--generator", help="skip stage one: start stage two from this run folder or generator.pth")
    p.add_argument("--set1", action="append", default=[], metavar="KEY=VALUE", help="stage-one override")
    p.add_argument("--set", dest="set2", action="append", default=[], metavar="KEY=VALUE", help="stage-two override")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice, all cores)")
    p.add_argument("--minutes", type=float, help="wall-clock budget of both stages together (default: the recipes' "
                   "epochs)")
    p.add_argument("--stage-one-share", type=float, default=0.5, help="stage one's share of --minutes (default 0.5)")
    args = p.parse_args(argv)

    import torch

    from colorgan.evaluate import evaluate
    from colorgan.train import gan_finetune, pretrain
    from colorgan.utils import enable_logging
    enable_logging()  # the runs' progress lines: plans, and why each checkpoint was kept
    if args.threads:
        torch.set_num_threads(args.threads)
    threads, out = torch.get_num_threads(), Path(args.out)
    holdout = args.holdout or str(Path(args.photos) / "valid")
    minutes, budget = {}, _split(args.minutes, args.stage_one_share, bool(args.generator))
    stage_one = args.generator or out / "stage1"
    if not args.generator:
        minutes["stage one"] = _timed(pretrain, args.photos, stage_one, recipe=args.recipe, overrides=args.set1,
                                      overwrite=True, minutes=budget[0])
    minutes["stage two"] = _timed(gan_finetune, args.photos, stage_one, out / "stage2", recipe=args.gan_recipe,
                                  overrides=args.set2, overwrite=True, minutes=budget[1])
    one = evaluate(stage_one, holdout, out / "eval-stage1", baseline="gray")["results"]
    two = evaluate(out / "stage2", holdout, out / "eval-stage2")["results"]
    systems = {"gray": one["gray"], "stage one": one["model"], "stage two": two["model"]}
    print(f"\n{len(systems)} systems scored on {holdout}; threads {threads}; "
          + "; ".join(f"{k}: {m:.1f} min wall, {m * threads:.1f} core-min" for k, m in minutes.items()))
    print("| metric | " + " | ".join(systems) + " |\n|---|" + "---:|" * len(systems))
    for key in ROWS:
        print(f"| {key} | " + " | ".join(f"{r[key]:.4f}" for r in systems.values()) + " |")
    comparison_grid([stage_one, out / "stage2"], holdout, out / "grid.png")
    shift = render_shift(out / "stage2", holdout)
    print(f"\nstage two at render size {shift['render'][0]} and {shift['render'][1]}: mean chroma "
          f"{shift['chroma'][0]:.2f} and {shift['chroma'][1]:.2f}, mean |difference| {shift['mean_abs_diff']:.2f}")
    (out / "gan_quality.json").write_text(json.dumps({"minutes": minutes, "budget": budget, "threads": threads,
                                                      "args": vars(args), "results": systems,
                                                      "render_shift": shift}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
