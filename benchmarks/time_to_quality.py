"""What a training budget buys: gather `gan_quality.py` runs made at several budgets into one table and a plot of
PSNR and delta-colourfulness against minutes, and colorize a folder of old photos into one contact sheet.

    for m in 10 30 90; do python benchmarks/gan_quality.py ../shared/data --minutes $m --out runs/q$m; done
    python benchmarks/time_to_quality.py runs/q10 runs/q30 runs/q90 --plot docs/time-to-quality.png
    python benchmarks/time_to_quality.py --sheet ../shared/data/historical --generator runs/q90/stage2 \\
        --out docs/historical.png

The plot is drawn with Pillow alone (no matplotlib needed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

SYSTEMS = {"gray": (150, 150, 150), "stage one": (40, 90, 200), "stage two": (210, 60, 40)}
PANELS = (("psnr", "PSNR (dB), higher is better"), ("delta_cf", "delta-colourfulness, lower is better"))
COLUMNS = ("psnr", "ssim", "ciede2000", "colorfulness", "delta_cf", "false_color", "wrong_hue",
           "lightness_drift", "tint_gain")


def gather(runs: list[str]) -> list[dict]:
    "One row a run: its budget (minutes of both stages), the wall minutes each stage took, and its results."
    rows = []
    for run in runs:
        data = json.loads((Path(run) / "gan_quality.json").read_text())
        budget = data.get("budget") or [None, None]
        if None in budget:
            raise SystemExit(f"{run} was not run with --minutes: its budget is unknown")
        rows.append({"run": run, "budget": sum(budget), "wall": data["minutes"], "results": data["results"]})
    return sorted(rows, key=lambda r: r["budget"])


def _cell(key: str, value: float | None) -> str:
    "A table cell; '-' for a measure the run predates (wrong_hue and tint_gain came after the first runs)."
    if value is None:
        return "-"
    if key in ("false_color", "wrong_hue", "tint_gain"):
        return f"{value:.2%}"
    return f"{value:.3f}" if key == "ssim" else f"{value:.2f}"


def table(rows: list[dict]) -> str:
    lines = ["| budget (min) | system | wall (min) | " + " | ".join(COLUMNS) + " |",
             "|---:|---|---:|" + "---:|" * len(COLUMNS)]
    for row in rows:
        for system, r in row["results"].items():
            wall = row["wall"].get(system)
            cells = [_cell(k, r.get(k)) for k in COLUMNS]
            lines.append(f"| {row['budget']:g} | {system} | {'' if wall is None else f'{wall:.1f}'} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, width: int = 380, height: int = 260) -> None:
    "Two panels (PSNR, delta-colourfulness) against the budget's minutes, one line a system, as a small PNG."
    pad, legend = 44, 18
    image = Image.new("RGB", (2 * width, height + legend), "white")
    draw, xs = ImageDraw.Draw(image), [r["budget"] for r in rows]
    x0, x1 = 0, max(xs) * 1.05
    for p, (key, title) in enumerate(PANELS):
        left = p * width
        values = [r["results"][s][key] for r in rows for s in SYSTEMS]
        lo, hi = min(values), max(values)
        lo, hi = lo - 0.08 * (hi - lo or 1), hi + 0.08 * (hi - lo or 1)

        def at(x, y):
            return (left + pad + (x - x0) / (x1 - x0) * (width - pad - 10),
                    height - pad + (y - lo) / (hi - lo) * -(height - 2 * pad + 16))

        draw.text((left + pad, 6), title, fill="black")
        (ax, ay), (bx, by) = at(x0, lo), at(x1, hi)
        draw.rectangle([ax, by, bx, ay], outline=(120, 120, 120))
        for x in xs:
            draw.text((at(x, lo)[0] - 6, height - pad + 4), f"{x:g}", fill="black")
        for y in (lo + (hi - lo) * i / 4 for i in range(5)):
            draw.text((left + 2, at(x0, y)[1] - 6), f"{y:.1f}", fill="black")
        draw.text((left + width // 2 - 40, height - pad + 18), "budget (minutes)", fill="black")
        for system, colour in SYSTEMS.items():
            points = [at(r["budget"], r["results"][system][key]) for r in rows]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for x, y in points:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    for i, (system, colour) in enumerate(SYSTEMS.items()):
        x = pad + i * 120
        draw.rectangle([x, height + 4, x + 12, height + 14], fill=colour)
        draw.text((x + 16, height + 3), system, fill="black")
    image.save(path, format="PNG", optimize=True)


def contact_sheet(folder: str, generator: str, path: Path, cell: int = 128, columns: int = 6) -> int:
    """Every photo of `folder` colorized by `generator` (as `colorgan colorize` would, at its render size), each fit
    into a `cell` x `cell` box, `columns` a row, as one PNG. Returns the number of photos."""
    from colorgan.inference import Colorizer
    from colorgan.photos import find_photos
    colorizer, files = Colorizer.from_artifact(generator), find_photos(folder)
    if not files:
        raise SystemExit(f"no photos in {folder}")
    rows = -(-len(files) // columns)
    sheet = Image.new("RGB", (columns * (cell + 2) - 2, rows * (cell + 2) - 2), "white")
    for i, file in enumerate(files):
        with Image.open(file) as img:
            out = colorizer(img)  # upright by its EXIF orientation, as colorize does
        out.thumbnail((cell, cell), Image.Resampling.LANCZOS)
        r, c = divmod(i, columns)
        sheet.paste(out, (c * (cell + 2) + (cell - out.width) // 2, r * (cell + 2) + (cell - out.height) // 2))
    sheet.save(path, format="PNG", optimize=True)
    return len(files)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="gan_quality.py output folders, run with --minutes")
    p.add_argument("--plot", type=Path, help="write the plot of PSNR and delta-colourfulness here (PNG)")
    p.add_argument("--sheet", help="a folder of photos to colorize into one contact sheet")
    p.add_argument("--generator", help="the generator (run folder or generator.pth) for --sheet")
    p.add_argument("--out", type=Path, help="the contact sheet's path (PNG)")
    args = p.parse_args(argv)
    from colorgan.utils import enable_logging
    enable_logging()
    if args.runs:
        rows = gather(args.runs)
        print(table(rows))
        if args.plot:
            plot(rows, args.plot)
            print(f"wrote {args.plot}")
    if args.sheet:
        if not (args.generator and args.out):
            raise SystemExit("--sheet needs --generator and --out")
        print(f"wrote {args.out}: {contact_sheet(args.sheet, args.generator, args.out)} photos")
    if not (args.runs or args.sheet):
        p.error("give gan_quality.py run folders, or --sheet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
