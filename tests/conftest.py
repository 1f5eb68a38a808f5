"Shared fixtures: small real photos from skimage.data in tmp folders, a private photo cache, no network."
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub download must fail at once, not after retries
# the same CPU policy on every machine (auto = fp32): a CPU with bf16 units would train in bf16 (device.py); the
# tests that need either say so, and subprocesses inherit this
os.environ["COLORGAN_CPU_BF16"] = "0"

import numpy as np
import pytest
import skimage.data
from PIL import Image

from colorgan.samples import write_sample_photos

TINY_MODEL = {"pretrained": False, "width": 0.25}  # a quarter-width resnet18: 8 MB artefacts, not 124 MB
TINY = {"data": {"size": 32, "bs": 4, "valid_pct": 0.25, "augment": False}, "fit": {"n_epoch": 1, "lr_max": 1e-3}}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("COLORGAN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    "A dozen small colour photos (skimage's, whole and cropped), 96 px on the long side."
    folder = tmp_path_factory.mktemp("photos")
    for path in write_sample_photos(folder, crops_per_photo=1)[:12]:
        img = Image.open(path)
        img.thumbnail((96, 96))
        img.save(path)
    for extra in sorted(folder.glob("*.jpg"))[12:]:
        extra.unlink()
    return folder


def tiny_recipe(**sections):
    "The tests' recipe: 32 px, batches of 4, no augmentation, one epoch; `sections` override per section."
    recipe = {k: dict(v) for k, v in TINY.items()}
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    return recipe


def interrupted(train, *args, **kwargs):
    "Run `train(*args, **kwargs)` as if the user pressed Ctrl-C right after its first epoch was checkpointed."
    from colorgan.callbacks import RunCheckpoint
    original = RunCheckpoint.after_epoch

    def crash(self):
        original(self)
        raise KeyboardInterrupt
    RunCheckpoint.after_epoch = crash
    try:
        with pytest.raises(KeyboardInterrupt):
            train(*args, **kwargs)
    finally:
        RunCheckpoint.after_epoch = original


def rgb_image(seed=0, size=(40, 56)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def artefact(tmp_path_factory):
    "A tiny untrained generator (quarter width, 32 px) saved as an artefact, seeded so its colours are not all gray."
    import torch

    from colorgan.artifacts import generator_meta, save_generator
    from colorgan.models import build_generator
    torch.manual_seed(0)
    net = build_generator(pretrained=False, width=0.25, img_size=32)
    path = tmp_path_factory.mktemp("model") / "generator.pth"
    save_generator(net, path, generator_meta({"arch": "resnet18", "width": 0.25}, 32, "pretrain", {}))
    return path


@pytest.fixture
def astronaut():
    return Image.fromarray(skimage.data.astronaut()).resize((80, 64))
