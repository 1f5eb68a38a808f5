"""Which colour does a generator paint where? For each model, the mean CIELAB a and b it paints over the pixels
where the real photo is orange/yellow, green, blue or red/magenta (the real photo's own mean beside it), and over
the pixels one model paints in a wrong hue (`colorgan.metrics.wrong_hue`), how often another model's hue is within
60 degrees of it and of the real photo's (docs/gan.md, round four).

    python benchmarks/colour_by_region.py ../shared/data/valid runs/q20/stage1 runs/q20/stage2
    python benchmarks/colour_by_region.py ../shared/data/valid runs/q20/stage1 runs/q20/stage2 --wrong-of 2

Photos are scored as `colorgan evaluate` scores them (short side 256 px, centre crop, 8-bit output).
"""
from __future__ import annotations

import argparse
import sys

# hue ranges in degrees of the real photo's CIELAB hue (atan2(b, a)); the last wraps through 0
REGIONS = {"orange/yellow": (30, 120), "green": (120, 210), "blue": (210, 300), "red/magenta": (300, 390)}


def _hue(lab):
    import torch
    return torch.rad2deg(torch.atan2(lab[:, 2], lab[:, 1])) % 360


def _near(lab1, lab2):
    "Per pixel: whether two colours' hues lie within wrong_hue's angle (60 degrees) of each other."
    from colorgan.metrics import wrong_hue_mask
    return ~wrong_hue_mask(lab1, lab2, chroma=0, real_chroma=0)


def region_means(pred_lab, real_lab, real_chroma: float = 10.0) -> dict[str, tuple]:
    "Per region of REGIONS (where the real chroma exceeds `real_chroma`): (mean a, mean b) of pred and of real."
    hue, chroma = _hue(real_lab), real_lab[:, 1:].norm(dim=1)
    hue = hue.where(hue >= 30, hue + 360)
    out = {}
    for name, (lo, hi) in REGIONS.items():
        where = (chroma > real_chroma) & (hue >= lo) & (hue < hi)
        out[name] = tuple(lab[:, i][where].mean().item() for lab in (pred_lab, real_lab) for i in (1, 2))
    return out


def colorized(models: list[str], photos: str, size: int = 256):
    "CIELAB (N,3,S,S) of the real photos and of each model's 8-bit output, as `colorgan evaluate` makes them."
    import numpy as np
    import torch

    from colorgan.color import rgb_to_lab
    from colorgan.evaluate import _colorize_batch
    from colorgan.inference import Colorizer
    from colorgan.photos import find_photos, load_photos
    cache = load_photos(find_photos(photos), size)
    real = torch.from_numpy(np.ascontiguousarray(cache.pixels[cache.usable()])).permute(0, 3, 1, 2).float() / 255
    preds = []
    for model in models:
        colorizer = Colorizer.from_artifact(model)
        rgb = [_colorize_batch(colorizer, real[i:i + 16]) for i in range(0, len(real), 16)]
        preds.append(rgb_to_lab(torch.cat(rgb)))
    return rgb_to_lab(real), preds


def table(names: list[str], real, preds) -> str:
    "One row of mean (a, b) per region for the real photos, then one per model with its wrong-hue area."
    from colorgan.metrics import wrong_hue
    means = [region_means(pred, real) for pred in preds]
    lines = ["| | " + " | ".join(f"{r}: a, b" for r in REGIONS) + " | wrong_hue |",
             "|---|" + "---:|" * (len(REGIONS) + 1),
             "| real photos | " + " | ".join(f"{means[0][r][2]:.1f}, {means[0][r][3]:.1f}" for r in REGIONS) + " | |"]
    lines += [f"| {name} | " + " | ".join(f"{m[r][0]:.1f}, {m[r][1]:.1f}" for r in REGIONS)
              + f" | {wrong_hue(pred, real).mean().item():.2%} |" for name, pred, m in zip(names, preds, means)]
    return "\n".join(lines)


def at_wrong_pixels(names: list[str], real, preds, k: int) -> str:
    "Over the pixels model `k` paints in a wrong hue: each model's mean chroma there and whose hue it follows."
    from colorgan.metrics import wrong_hue_mask
    wrong = wrong_hue_mask(preds[k], real)
    lines = [f"at the {int(wrong.sum())} pixels {names[k]} paints in a wrong hue:"]
    for name, pred in zip(names, preds):
        lines.append(f"- {name}: mean chroma {pred[:, 1:].norm(dim=1)[wrong].mean().item():.1f}; hue within 60 "
                     f"degrees of {names[k]}'s {_near(pred, preds[k])[wrong].float().mean().item():.0%}, of the "
                     f"real photo's {_near(pred, real)[wrong].float().mean().item():.0%}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", help="folder of colour photos (a holdout)")
    p.add_argument("models", nargs="+", help="run folders or generator.pth files")
    p.add_argument("--wrong-of", type=int, help="whose wrong-hue pixels to examine (1-based; default the last model)")
    args = p.parse_args(argv)
    k = len(args.models) - 1 if args.wrong_of is None else args.wrong_of - 1
    if not 0 <= k < len(args.models):
        raise SystemExit(f"--wrong-of must be between 1 and {len(args.models)}, not {args.wrong_of}")
    real, preds = colorized(args.models, args.photos)
    print(table(args.models, real, preds) + "\n\n" + at_wrong_pixels(args.models, real, preds, k))
    return 0


if __name__ == "__main__":
    sys.exit(main())
