"Pictures of (L, ab) batches: fastai's show methods and PNG grids (gray | predicted | real)."
from __future__ import annotations

import numpy as np
import torch
from fastai.torch_core import show_image
from fastai.vision.data import get_grid
from fastcore.basics import fastuple
from PIL import Image, ImageDraw

from .color import gray_rgb, model_to_rgb


class LabImage(fastuple):
    "One (L, ab) pair in the model's scaling, (1,H,W) and (2,H,W); `show` decodes it to RGB."
    def show(self, ctx=None, **kwargs):
        l, ab = self
        return show_image(model_to_rgb(l[None], ab[None])[0].cpu(), ctx=ctx, **kwargs)



def show_columns(l: torch.Tensor, columns: dict[str, torch.Tensor | None], max_n: int = 9, ctxs=None, **kwargs):
    """A matplotlib grid with one row per photo and one column per ab prediction (None shows the gray input), on
    `ctxs` (axes, row by row) when given, else on a new figure; returns the axes."""
    l = l[:max_n].detach().cpu()
    n, titles = len(l), list(columns)
    axs = list(ctxs) if ctxs is not None else get_grid(n * len(titles), nrows=n, ncols=len(titles),
                                                       figsize=(3 * len(titles), 3 * n), return_fig=False)
    if len(axs) < n * len(titles):
        raise ValueError(f"{n} photos x {len(titles)} columns need {n * len(titles)} axes in ctxs, not {len(axs)}")
    for i in range(n):
        for j, title in enumerate(titles):
            ab = columns[title]
            ab = torch.zeros(2, *l.shape[-2:]) if ab is None else ab[i].detach().float().cpu()
            LabImage(l[i], ab).show(ctx=axs[i * len(titles) + j], title=title if i == 0 else None, **kwargs)
    return axs


LINE = 14  # px per line of the title rows (PIL's built-in bitmap font: no font file, works offline)


def grid_image(columns: list[torch.Tensor], max_n: int = 8, gap: int = 2, titles: list[str] | None = None,
               caption: str | None = None) -> Image.Image:
    """RGB batches (N,3,H,W) in [0,1], one per column -> a PIL grid of `max_n` rows, no matplotlib needed; above it
    a `caption` line (the epoch or the checkpoint) and a row naming the columns (`titles`), readable at a glance."""
    cols = [c[:max_n].detach().float().cpu().clamp(0, 1) for c in columns]
    n, (h, w) = len(cols[0]), cols[0].shape[-2:]
    top = LINE * ((caption is not None) + (titles is not None))
    canvas = np.full((top + n * (h + gap) - gap, len(cols) * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for j, col in enumerate(cols):
        pix = (col.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        for i in range(n):
            canvas[top + i * (h + gap):top + i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = pix[i]
    image = Image.fromarray(canvas)
    draw, y = ImageDraw.Draw(image), 0
    if caption is not None:
        draw.text((2, y + 1), caption, fill=(0, 0, 0))
        y += LINE
    for j, title in enumerate(titles or []):
        draw.text((j * (w + gap) + 2, y + 1), title, fill=(60, 60, 60))
    return image


def sample_grid(l: torch.Tensor, pred_ab: torch.Tensor, real_ab: torch.Tensor, max_n: int = 8,
                caption: str | None = None) -> Image.Image:
    "gray | predicted | real, one row per photo, under a title row (and `caption`, e.g. the epoch)."
    return grid_image([gray_rgb(l), model_to_rgb(l, pred_ab), model_to_rgb(l, real_ab)], max_n,
                      titles=["gray", "predicted", "real"], caption=caption)
