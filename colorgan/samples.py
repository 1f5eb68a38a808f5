"""The embedded default photos: colour pictures that ship with scikit-image, for the quickstart and the tests."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SAMPLE_NAMES", "write_sample_photos"]

SAMPLE_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
                "retina", "stereo_motorcycle", "cat", "colorwheel")


def _load(name: str) -> np.ndarray:
    import skimage.data
    img = getattr(skimage.data, name)()
    return img[0] if isinstance(img, tuple) else img  # stereo_motorcycle is (left, right, disparity)


def write_sample_photos(folder: str | os.PathLike, crops_per_photo: int = 4, seed: int = 0) -> list[Path]:
    """Write scikit-image's colour photos to `folder` as JPEGs, each whole and as `crops_per_photo` seeded random
    crops (half to four fifths of each side), so a tiny training run has a few dozen distinct pictures.
    Files that already exist are left as they are."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng, written = np.random.default_rng(seed), []
    for name in SAMPLE_NAMES:
        img = _load(name)[..., :3]
        h, w = img.shape[:2]
        views = [img]
        for _ in range(crops_per_photo):
            ch, cw = (rng.uniform(0.5, 0.8, 2) * (h, w)).astype(int)
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            views.append(img[y:y + ch, x:x + cw])
        for k, view in enumerate(views):
            path = folder / f"{name}_{k}.jpg"
            if not path.exists():
                Image.fromarray(np.ascontiguousarray(view)).save(path, quality=95)
            written.append(path)
    return written
