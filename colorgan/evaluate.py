"""`colorgan evaluate`: take the colour out of colour photos, colorize them, and compare with the originals.

The protocol, stated in every output: each photo is resized so its short side is 256 px and centre-cropped to
256x256 (as the training cache does it); its CIELAB L is colorized at the model's render size and written out as
8-bit RGB, exactly as `colorgan colorize` would; the metrics compare that with the original crop.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import torch

from .color import gray_rgb, norm_ab, norm_l, rgb_to_lab
from .data import CachedPhotos
from .inference import Colorizer
from .metrics import (FALSE_COLOR_CHROMA, WRONG_HUE, ciede2000, colorfulness, false_color, lightness_drift, psnr, ssim,
                      tint_floor, wrong_hue)
from .photos import find_photos, load_photos, report
from .show import grid_image
from .utils import ColorganError, atomic_path, check_out, log

__all__ = ["evaluate", "score", "PROTOCOL", "METRICS"]

PROTOCOL = ("short side resized to {size} px and centre-cropped to {size}x{size}; L of the crop colorized at render "
            "size {render} and saved as 8-bit RGB; PSNR and SSIM on RGB in [0,1] (data range 1, SSIM with a "
            "Gaussian window sigma 1.5 as Wang et al.), mean CIEDE2000 over pixels, colourfulness M3 of Hasler and "
            "Suesstrunk (absolute opponent channels, 0-255 scale); delta_cf = |mean colourfulness of originals - "
            "mean colourfulness of predictions|; false_color = share of pixels whose CIELAB chroma exceeds the "
            "original's by more than {excess:g}; wrong_hue = share of pixels whose chroma exceeds {chroma:g} and whose "
            "hue is more than {degrees:g} degrees from the original's where the original's chroma exceeds "
            "{real_chroma:g}; lightness_drift = mean |L(prediction) - L(original)| in CIELAB units; tint_gain = 1 - "
            "(mean |ab(prediction) - ab(original)|) / (the same for the best single tint of all these originals, "
            "their median a and b: {floor:.4f} in ab/110 units)")
METRICS = ("psnr", "ssim", "ciede2000", "colorfulness", "false_color", "wrong_hue", "lightness_drift", "tint_gain")


def score(pred: torch.Tensor, real: torch.Tensor, floor: float | None = None) -> dict[str, torch.Tensor]:
    """Per-image metrics of RGB batches (N,3,H,W) in [0,1]; `tint_gain` only with `floor`, the `tint_floor` of
    the photos being scored."""
    pred_lab, real_lab = rgb_to_lab(pred), rgb_to_lab(real)
    tint = {} if floor is None else {
        "tint_gain": 1 - norm_ab(pred_lab[:, 1:] - real_lab[:, 1:]).abs().flatten(1).mean(1) / floor}
    return tint | {"psnr": psnr(pred, real).clamp(max=100), "ssim": ssim(pred, real),
            "ciede2000": ciede2000(pred_lab, real_lab).flatten(1).mean(1),
            "colorfulness": colorfulness(pred), "false_color": false_color(pred_lab, real_lab),
            "wrong_hue": wrong_hue(pred_lab, real_lab), "lightness_drift": lightness_drift(pred_lab, real_lab),
            "colorfulness_real": colorfulness(real)}


def _colorize_batch(colorizer: Colorizer | None, real: torch.Tensor) -> torch.Tensor:
    "8-bit round trip of what a user gets: the model's colours, or (colorizer None) the gray L alone."
    l = rgb_to_lab(real)[:, :1]
    if colorizer is None:
        return (gray_rgb(norm_l(l)) * 255 + 0.5).floor() / 255
    lightness = list(l.split(1))
    out = [torch.from_numpy(colorizer.combine(li, ab)).permute(2, 0, 1)
           for li, ab in zip(lightness, colorizer.predict_ab(lightness))]
    return torch.stack(out).float() / 255


def _summary(rows: list[dict]) -> dict:
    mean = {k: float(np.mean([r[k] for r in rows])) for k in (*METRICS, "colorfulness_real")}
    mean["delta_cf"] = abs(mean["colorfulness_real"] - mean["colorfulness"])
    return mean


def evaluate(model: str | os.PathLike | None, data: str | os.PathLike, out: str | os.PathLike,
             baseline: str | None = None, size: int = 256, render_size: int | None = None,
             bs: int = 16, device=None, engine: str = "auto", overwrite: bool = False) -> dict:
    """Score a generator (and, with baseline='gray', the L channel alone) on the colour photos in `data`; write
    metrics.json, per_image.csv and samples.png to `out`; return the JSON's content."""
    if model is None and baseline != "gray":
        raise ColorganError("evaluate needs a MODEL, or --baseline gray to score the gray floor alone")
    if baseline not in (None, "gray"):
        raise ColorganError(f"the only baseline is 'gray', not '{baseline}'")
    check_out(Path(out), data)
    existing = [name for name in EVAL_FILES if (Path(out) / name).exists()]
    if existing and not overwrite:
        raise ColorganError(f"{out} already holds {', '.join(existing)}: choose another --out, or pass --overwrite "
                            f"to replace them")
    colorizer = Colorizer.from_artifact(model, render_size, device, engine=engine) if model is not None else None
    photos = load_photos(find_photos(data), size)
    report([photos])
    idx = photos.usable()
    if len(idx) == 0:
        raise ColorganError(f"no colour photos to evaluate in {data}")
    floor = tint_floor(CachedPhotos(photos.pixels, idx))
    systems = ({"model": colorizer} if colorizer else {}) | ({"gray": None} if baseline == "gray" else {})
    rows = {name: [] for name in systems}
    grid = None
    for start in range(0, len(idx), bs):
        batch = idx[start:start + bs]
        real = torch.from_numpy(np.ascontiguousarray(photos.pixels[batch])).permute(0, 3, 1, 2).float() / 255
        preds = {name: _colorize_batch(c, real) for name, c in systems.items()}
        for name, pred in preds.items():
            per = score(pred, real, floor)
            rows[name] += [{"file": str(photos.files[i].name), **{k: float(v[j]) for k, v in per.items()}}
                           for j, i in enumerate(batch)]
        if grid is None:
            models = [n for n in preds if n != "gray"]
            grid = grid_image([preds.get("gray", gray_rgb(norm_l(rgb_to_lab(real)[:, :1]))),
                               *[preds[n] for n in models], real], titles=["gray", *models, "real"],
                              caption=f"{Path(model).name if model is not None else 'gray floor'}, {len(idx)} photos")
    render = colorizer.render_size if colorizer else "-"
    protocol = PROTOCOL.format(size=size, render=render, excess=FALSE_COLOR_CHROMA, floor=floor, **WRONG_HUE)
    result = {"protocol": protocol, "data": str(data), "n_images": len(idx),
              "model": str(model) if model is not None else None,
              "results": {name: _summary(r) for name, r in rows.items()}}
    _write(Path(out), result, rows, grid)
    return result


EVAL_FILES = ("metrics.json", "per_image.csv", "samples.png")


def _write(out: Path, result: dict, rows: dict[str, list[dict]], grid) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    with atomic_path(out / "per_image.csv") as tmp, open(tmp, "w", newline="", errors="surrogateescape") as f:
        fields = ["system", "file", *METRICS, "colorfulness_real"]
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for name, rs in rows.items():
            w.writerows({"system": name, **r} for r in rs)
            w.writerow({"system": name, "file": "mean", **result["results"][name]})
    with atomic_path(out / "samples.png") as tmp:
        grid.save(tmp, format="PNG")
    log.info(f"wrote {out / 'metrics.json'}, {out / 'per_image.csv'} and {out / 'samples.png'}")


def format_table(result: dict) -> str:
    "The means as a Markdown table, one column per system, under the protocol."
    names = list(result["results"])
    keys = (*METRICS, "colorfulness_real", "delta_cf")
    lines = [f"| metric | {' | '.join(names)} |", "|---|" + "---:|" * len(names)]
    lines += [f"| {k} | " + " | ".join(f"{result['results'][n][k]:.4f}" for n in names) + " |" for k in keys]
    return f"{result['n_images']} photos from {result['data']}\nprotocol: {result['protocol']}\n\n" + "\n".join(lines)
