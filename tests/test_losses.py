"The rebalanced colour loss: the prior of the ab plane, the weights and the loss, on photos with known colours."
import numpy as np
import pytest
import torch
from fastai.losses import L1LossFlat

from colorgan.color import lab_to_model, rgb_to_lab
from colorgan.data import photo_dls
from colorgan.learner import pretrain_learner
from colorgan.losses import AB_SIDE, RebalancedL1, ab_bins, colour_prior, rebalance_weights
from conftest import TINY_MODEL

GRAY, GREEN = (128, 128, 128), (40, 160, 40)


def two_colour_photos(n=4, size=8):
    "uint8 photos (n,size,size,3): three quarters of the pixels gray, one quarter green."
    photos = np.empty((n, size, size, 3), np.uint8)
    photos[:] = GRAY
    photos[:, : size // 4] = GREEN
    return photos


def cell(rgb):
    "The ab cell of one sRGB colour."
    pixel = torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1) / 255
    return ab_bins(lab_to_model(rgb_to_lab(pixel))[1]).item()


def test_the_prior_counts_each_colour_cell():
    prior = colour_prior(two_colour_photos(), sigma=1e-3)  # no smoothing: the exact shares
    assert prior.shape == (AB_SIDE * AB_SIDE,) and cell(GRAY) != cell(GREEN)
    assert prior[cell(GRAY)].item() == pytest.approx(0.75) and prior[cell(GREEN)].item() == pytest.approx(0.25)
    smoothed = colour_prior(two_colour_photos())
    assert smoothed.sum().item() == pytest.approx(1.0) and 0 < smoothed[cell(GRAY)] < 0.75
    sampled = colour_prior(two_colour_photos(n=64, size=64), max_pixels=4096, sigma=1e-3)
    assert sampled[cell(GREEN)].item() == pytest.approx(0.25, abs=0.02)  # every k-th pixel keeps the shares


def test_rebalanced_weights_favour_rare_colours_and_average_one():
    prior = colour_prior(two_colour_photos(), sigma=1e-3)
    assert torch.allclose(rebalance_weights(prior, 0.0), torch.ones_like(prior))  # strength 0: plain L1
    weights = rebalance_weights(prior, 0.5)
    # 1 / (0.5 p + 0.5 / Q) with Q = 2 cells: green (p = 1/4) weighs (0.375 + 0.25) / (0.125 + 0.25) = 5/3 of gray
    assert (weights[cell(GREEN)] / weights[cell(GRAY)]).item() == pytest.approx(5 / 3)
    assert (prior * weights).sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="rebalance"):
        rebalance_weights(prior, 1.0)


def test_rebalanced_l1_weighs_errors_by_the_real_colour():
    photos = torch.from_numpy(two_colour_photos(n=1)).permute(0, 3, 1, 2).float() / 255
    target = lab_to_model(rgb_to_lab(photos))[1]
    prior = colour_prior(two_colour_photos(), sigma=1e-3)
    pred = target + 0.1 * torch.randn_like(target)
    assert RebalancedL1(prior, 0.0)(pred, target).item() == pytest.approx(L1LossFlat()(pred, target).item(), rel=1e-5)
    loss = RebalancedL1(prior, 0.5)
    on_green, on_gray = target.clone(), target.clone()
    on_green[:, :, :2] += 0.1   # the same error on the green rows (a quarter of the pixels) ...
    on_gray[:, :, 2:4] += 0.1   # ... and on as many gray ones
    assert (loss(on_green, target) / loss(on_gray, target)).item() == pytest.approx(5 / 3, rel=1e-4)


def test_stage_one_trains_on_the_rebalanced_loss(photo_dir):
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, device="cpu")
    learn = pretrain_learner(dls, rebalance=0.5, **TINY_MODEL)
    assert isinstance(learn.loss_func, RebalancedL1)
    assert not isinstance(pretrain_learner(dls, **TINY_MODEL).loss_func, RebalancedL1)  # plain L1 by default
    learn.fit(1, 1e-3)
    assert np.isfinite(learn.recorder.values[-1][:2]).all()


def test_the_tint_floor_and_gain_on_known_photos():
    """The best single tint of 3/4 gray + 1/4 green is gray: its L1 is the green quarter's; the metric finds the
    same floor from the validation batches and scores that tint 0, the truth 1, half the truth 0.5."""
    from types import SimpleNamespace

    from colorgan.metrics import TintGain, tint_floor
    photos = two_colour_photos()
    target = lab_to_model(rgb_to_lab(torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255))[1]
    green_ab = target[0, :, 0, 0].abs().mean().item()  # the mean |a|, |b| of green in the model's units
    floor = tint_floor(photos)
    assert floor == pytest.approx(0.25 * green_ab, abs=1e-3)  # to the histogram's 0.1 CIELAB units
    gain = TintGain()
    for pred, expected in ((torch.zeros_like(target), 0.0), (target, 1.0), (target / 2, 0.5)):
        gain.reset()
        for half in (slice(0, 2), slice(2, 4)):  # two validation batches
            gain.accumulate(SimpleNamespace(pred=pred[half], yb=(target[half],)))
        assert gain.value == pytest.approx(expected, abs=0.01)


def test_a_stage_one_that_paints_one_tint_is_named(photo_dir, tmp_path, caplog, monkeypatch):
    import logging

    import colorgan.train
    from colorgan.train import pretrain
    from conftest import tiny_recipe
    recipe = tiny_recipe(model=TINY_MODEL)
    with caplog.at_level(logging.INFO, logger="colorgan"):
        learn = pretrain(photo_dir, tmp_path / "a", recipe=recipe)  # one tiny epoch: about one tint
    gain = learn.recorder.values[-1][learn.recorder.metric_names.index("tint_gain") - 1]
    assert gain < colorgan.train.ONE_TINT and "only" in caplog.text and "tint_gain" in caplog.text
    caplog.clear()
    monkeypatch.setattr(colorgan.train, "ONE_TINT", gain - 1)
    with caplog.at_level(logging.INFO, logger="colorgan"):
        pretrain(photo_dir, tmp_path / "b", recipe=recipe)
    assert "better than one tint" not in caplog.text and "tint_gain" in caplog.text  # the epoch's line, no warning
