import csv

import pytest
import torch
from fastai.torch_core import set_seed

from colorgan.artifacts import load_generator
from colorgan.callbacks import RunCheckpoint
from colorgan.data import photo_dls
from colorgan.learner import pretrain_learner
from colorgan.train import pretrain
from colorgan.utils import ColorganError
from conftest import TINY_MODEL, interrupted, tiny_recipe


def _l1(learn, dl):
    return learn.validate(dl=dl)[0]


def test_training_lowers_l1_on_a_fixed_set(photo_dir):
    set_seed(0)
    dls = photo_dls(photo_dir, size=32, bs=2, valid_pct=0.25, augment=False, decode_workers=1)
    learn = pretrain_learner(dls, pretrained=False, width=0.25)
    fixed = dls.train.new(shuffle=False, drop_last=False)
    before = _l1(learn, fixed)
    learn.fit_one_cycle(8, 3e-3)
    after = _l1(learn, fixed)
    assert after < 0.9 * before, (before, after)  # seen: 0.152 -> 0.127; a fresh net predicts about gray


def test_pretrain_writes_the_run_folder(photo_dir, tmp_path):
    run = tmp_path / "run"
    learn = pretrain(photo_dir, run, recipe=tiny_recipe(model=TINY_MODEL))
    for name in ["generator.pth", "recipe.resolved.toml", "history.csv", "samples/epoch_001.png",
                 "checkpoints/last.pth", "checkpoints/best.pth"]:
        assert (run / name).is_file(), name
    net, meta = load_generator(run)
    assert meta["size"] == 32 and meta["stage"] == "pretrain" and meta["recipe"]["fit"]["n_epoch"] == 1
    assert meta["build"]["arch"] == "resnet18"
    for k, v in learn.model.state_dict().items():
        assert torch.equal(net.state_dict()[k], v.cpu()), k
    with pytest.raises(ColorganError, match="already holds a run"):
        pretrain(photo_dir, run, recipe=tiny_recipe(model=TINY_MODEL))


def _read_history(run):
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def test_resume_continues_from_the_saved_epoch(photo_dir, tmp_path, monkeypatch):
    run, recipe = tmp_path / "run", tiny_recipe(model=TINY_MODEL, fit={"n_epoch": 3})
    interrupted(pretrain, photo_dir, run, recipe=recipe)
    first = _read_history(run)
    saved = torch.load(run / "checkpoints/last.pth", weights_only=True)
    assert len(first) == 1 and saved["epoch"] == 1 and not (run / "generator.pth").exists()
    assert saved["best"] == pytest.approx(float(first[0]["valid_loss"]))  # the checkpoint knows this epoch's score

    seen, grid = [], run / "samples/epoch_001.png"
    stamp, pixels = grid.stat().st_mtime_ns, grid.read_bytes()
    monkeypatch.setattr(RunCheckpoint, "before_fit", lambda self: seen.append(
        {k: v.clone() for k, v in self.model.state_dict().items()}) or setattr(self, "sample", None))
    pretrain(photo_dir, run, resume=True)
    rows = _read_history(run)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["train_loss"] == first[0]["train_loss"]  # the interrupted epoch's numbers, replayed
    assert grid.stat().st_mtime_ns == stamp and grid.read_bytes() == pixels  # epoch 1 is not trained again
    assert (run / "samples/epoch_003.png").is_file()
    assert all(torch.equal(seen[0][k], v) for k, v in saved["model"].items())  # started from the checkpoint
    assert torch.load(run / "checkpoints/last.pth", weights_only=True)["epoch"] == 3


def test_resume_without_a_run_is_a_clear_error(photo_dir, tmp_path):
    with pytest.raises(ColorganError, match="nothing to resume"):
        pretrain(photo_dir, tmp_path / "never", resume=True)


def test_fused_adamw_trains_and_checkpoints(photo_dir, tmp_path):
    "The GPU's optimizer (torch's fused AdamW under fastai's OptimWrapper) also runs on CPU, and resumes."
    run = tmp_path / "run"
    recipe = tiny_recipe(model=TINY_MODEL, learner={"fused_adam": True}, fit={"n_epoch": 1})
    learn = pretrain(photo_dir, run, recipe=recipe)
    assert type(learn.opt).__name__ == "OptimWrapper" and learn.opt.opt.defaults["fused"]
    learn = pretrain(photo_dir, run, resume=True, overrides=["fit.n_epoch=2"])
    assert torch.load(run / "checkpoints/last.pth", weights_only=True)["epoch"] == 2


def test_overwrite_removes_only_what_a_run_wrote(photo_dir, tmp_path):
    run = tmp_path / "run"
    recipe = tiny_recipe(model=TINY_MODEL)
    pretrain(photo_dir, run, recipe=recipe)
    mine = {run / "notes.txt": "mine", run / "checkpoints" / "keep.pth": "mine too", run / "samples" / "my.png": "!"}
    for path, text in mine.items():
        path.write_text(text)
    (run / "samples" / "epoch_009.png").write_bytes(b"a grid of an older run")
    (run / "checkpoints" / ".last.pth.x1y2.colorgan.tmp").write_bytes(b"a write killed half way")
    stamp = (run / "generator.pth").stat().st_mtime_ns
    pretrain(photo_dir, run, recipe=recipe, overwrite=True)
    assert all(path.read_text() == text for path, text in mine.items())
    assert not (run / "samples" / "epoch_009.png").exists() and not list(run.rglob(".*.colorgan.tmp"))
    assert (run / "generator.pth").stat().st_mtime_ns != stamp and (run / "samples" / "epoch_001.png").is_file()


def _record(psnr, cf, fc=0.0, real=30.0):
    return {"psnr": psnr, "colorfulness": cf, "colorfulness_real": real, "false_color": fc}


def test_the_colour_rule_keeps_the_right_generator():
    """Scripted validation history: the most colourful (closest to real) among those within 0.5 dB of the start
    and with little false colour; a NaN PSNR is never eligible."""
    from colorgan.callbacks import ColourRule
    rule = ColourRule(_record(24.0, 10.0), max_psnr_drop=0.5, max_false_color=0.02)
    history = [_record(23.9, 14.0), _record(23.2, 29.0), _record(23.6, 22.0, fc=0.05), _record(23.55, 20.0),
               _record(float("nan"), 30.0), _record(23.7, 18.0)]
    scores = [rule.judge(r)[0] for r in history]
    assert scores[1] is None and scores[2] is None and scores[4] is None
    best = min((s, i) for i, s in enumerate(scores) if s is not None)[1]
    assert best == 3
    assert "PSNR below the floor 23.50" in rule.judge(history[1])[1]
    assert "false colour above 2%" in rule.judge(history[2])[1]


def test_the_colour_rule_can_limit_wrong_hue():
    "With `max_wrong_hue` set, a more colourful generator with more wrong hue is passed over; unset, it is kept."
    from colorgan.callbacks import ColourRule
    history = [dict(_record(23.9, 14.0), wrong_hue=0.01), dict(_record(23.8, 20.0), wrong_hue=0.06),
               _record(23.8, 19.0)]  # the last from a history that predates the measure
    for limit, kept in ((None, 1), (0.03, 0)):
        rule = ColourRule(_record(24.0, 10.0), max_wrong_hue=limit)
        scores = [rule.judge(r)[0] for r in history]
        assert min((s, i) for i, s in enumerate(scores) if s is not None)[1] == kept
    assert "wrong hue 6.00%: wrong hue above 3.0%" in rule.judge(history[1])[1]
    assert rule.judge(history[2])[0] is None  # unmeasured is not within a limit
    assert "wrong hue" not in ColourRule(_record(24.0, 10.0)).judge(history[2])[1]


def test_epochs_of_a_few_batches_still_see_every_photo(photo_dir):
    "epoch_batches: short epochs that continue one shuffled queue, so each photo comes once before any twice."
    dls = photo_dls(photo_dir, size=32, bs=2, valid_pct=0.25, augment=False, decode_workers=1, epoch_batches=2)
    assert len(dls.train) == 2
    seen = [i for _ in range(2) for i in dls.train.get_idxs()]
    assert sorted(seen[:8]) == sorted(set(seen[:8])) and len(seen) == 8
    n = dls.train.n
    first_pass = [i for _ in range(-(-n // 4)) for i in dls.train.get_idxs()]
    assert set(first_pass) == set(range(n))  # every photo within ceil(n / 4) epochs of 4 (the queue goes on)


def test_dull_photos_are_left_out(photo_dir):
    from colorgan.data import photo_colorfulness
    dls = photo_dls(photo_dir, size=32, bs=2, valid_pct=0.25, augment=False, decode_workers=1)
    cf = photo_colorfulness(dls.train.dataset)
    threshold = float(sorted(cf)[len(cf) // 2])
    fewer = photo_dls(photo_dir, size=32, bs=2, valid_pct=0.25, augment=False, decode_workers=1,
                      min_colorfulness=threshold)
    assert len(fewer.train.dataset) == int((cf >= threshold).sum()) < len(cf)
    assert photo_colorfulness(fewer.train.dataset).min() >= threshold
    with pytest.raises(ColorganError, match=r"data.min_colorfulness = 1000 leaves 0 of 9 training photos"):
        photo_dls(photo_dir, size=32, bs=2, valid_pct=0.25, augment=False, decode_workers=1, min_colorfulness=1000)


@pytest.mark.parametrize("stage", ["pretrain", "gan"])
def test_predict_get_preds_and_export_work_on_both_learners(photo_dir, tmp_path, stage, astronaut):
    "The fastai habits: learn.predict on a PIL image or a path, get_preds over dls.test_dl, export and load_learner."
    from fastai.learner import load_learner

    from colorgan.color import denorm_l, rgb_to_lab
    from colorgan.gan import gan_learner
    from colorgan.models import build_critic, build_generator
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False)
    learn = (pretrain_learner(dls, pretrained=False, width=0.25) if stage == "pretrain" else
             gan_learner(dls, build_generator(pretrained=False, width=0.25, img_size=32), build_critic(n_filters=8)))
    rgb, ab, raw = learn.predict(astronaut)
    assert rgb.shape == (3, 32, 32) and ab.shape == raw.shape == (2, 32, 32)
    (l,) = dls.test_dl([astronaut]).one_batch()
    learn.model.eval()
    with torch.no_grad():
        assert torch.allclose(learn.model(l)[0], ab, atol=1e-5)  # predict is the model on the photo's own L
    lightness = rgb_to_lab(rgb[None].float())[0, 0]
    assert (lightness - denorm_l(l)[0, 0]).abs().max() < 0.1  # decode_batch inverts the uint8 -> (L, ab) step
    photos = sorted(photo_dir.glob("*.jpg"))[:3]
    preds, targets = learn.get_preds(dl=dls.test_dl(photos))
    assert preds.shape == (3, 2, 32, 32) and targets is None
    assert learn.predict(photos[0])[1].shape == (2, 32, 32)
    learn.export(tmp_path / "learner.pkl")
    again = load_learner(tmp_path / "learner.pkl")
    assert torch.allclose(again.predict(astronaut)[1], ab, atol=1e-5)


def test_resume_with_new_epochs_rewrites_the_recipe_and_warns(photo_dir, tmp_path, caplog):
    import logging
    run = tmp_path / "run"
    pretrain(photo_dir, run, recipe=tiny_recipe(model=TINY_MODEL, fit={"n_epoch": 1}))
    with caplog.at_level(logging.WARNING, logger="colorgan"):
        pretrain(photo_dir, run, resume=True, overrides=["fit.n_epoch=2"])
    assert "fit.n_epoch = 2 (was 1)" in caplog.text and "schedule" in caplog.text
    assert "n_epoch = 2" in (run / "recipe.resolved.toml").read_text()
    assert len(_read_history(run)) == 2


def test_the_run_checkpoint_is_a_tracker_that_serves_two_fits_and_steps_aside_for_lr_find(photo_dir, tmp_path):
    from fastai.callback.tracker import TrackerCallback
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False)
    learn = pretrain_learner(dls, pretrained=False, width=0.25, path=tmp_path / "run")
    checkpoint = RunCheckpoint({"build": {}, "size": 32})
    assert isinstance(checkpoint, TrackerCallback)
    learn.add_cb(checkpoint)
    learn.lr_find(num_it=5, show_plot=False)
    assert not (tmp_path / "run" / "checkpoints").exists()  # lr_find only probes: nothing written
    learn.fit(1, 1e-3)
    learn.fit(1, 1e-3)  # fastai sets Callback.run back to True after a fit: nothing of ours may live there
    assert (tmp_path / "run" / "checkpoints" / "last.pth").is_file() and checkpoint.best < float("inf")
    assert len(list((tmp_path / "run" / "samples").glob("epoch_*.png"))) == 1  # epoch 1 of each fit


def test_tensorboard_logs_both_stages_and_goes_on_across_resume(photo_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from click.testing import CliRunner
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from colorgan.cli import main
    tiny = ["--set", "data.size=32", "--set", "data.bs=4", "--set", "data.valid_pct=0.25", "--set", "fit.lr_max=1e-3",
            "--set", "data.augment=false", "--tensorboard"]
    g, gan = tmp_path / "g", tmp_path / "gan"
    for args in (["pretrain", photo_dir, "--out", g, "--no-pretrained", "--set", "model.width=0.25",
                  "--set", "fit.n_epoch=1", *tiny],
                 ["pretrain", photo_dir, "--out", g, "--resume", "--set", "fit.n_epoch=2", "--tensorboard"],
                 ["gan-finetune", photo_dir, "--generator", g, "--out", gan, "--set", "fit.n_epoch=1",
                  "--set", "critic.n_filters=8", *tiny]):
        r = CliRunner().invoke(main, [str(a) for a in args])
        assert r.exit_code == 0, r.output

    def events(run):
        acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        return acc
    stage_one = events(g)
    steps = [e.step for e in stage_one.Scalars("train_loss")]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and steps[-1] > steps[0]  # resume goes on
    assert len(stage_one.Scalars("valid_loss")) == 2 and len(stage_one.Images("samples")) == 2
    assert "lr_0" in stage_one.Tags()["scalars"] and "psnr" in stage_one.Tags()["scalars"]
    assert "loss_G_GAN" in events(gan).Tags()["scalars"]


def test_tensorboard_missing_is_a_clear_message(monkeypatch):
    import builtins

    from colorgan.callbacks import tensorboard_callback
    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "fastai.callback.tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ColorganError, match=r"pip install 'colorgan\[tensorboard\]'"):
        tensorboard_callback(True)
    assert tensorboard_callback(False) == []


class _BodyWatch:
    "The body's and the decoder's weights after every training step of a fit."
    def __init__(self): self.steps = []

    def callback(self):
        from fastai.callback.core import Callback
        watch = self

        class Watch(Callback):
            def after_step(self):
                watch.steps.append((_conv_weights(self.model[0]), _conv_weights(self.model.layers[-3])))
        return Watch()


def _conv_weights(module):
    return [p.detach().clone() for n, p in module.named_parameters() if p.ndim == 4]


@pytest.mark.parametrize("by_lr", [False, True], ids=["requires_grad", "ddp_lr_0"])
@pytest.mark.parametrize("freeze_pct", [0.5, 1.0])
def test_the_body_is_frozen_for_its_share_of_the_schedule(photo_dir, freeze_pct, by_lr, monkeypatch):
    "by_lr: the DDP way (the body's learning rate held at 0), run on one CPU process with DDP's check forced."
    import colorgan.learner
    from colorgan.learner import fit_pretrain
    monkeypatch.setattr(colorgan.learner, "is_distributed", lambda: by_lr)
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, epoch_batches=4, decode_workers=1)
    learn = pretrain_learner(dls, pretrained=False, width=0.25)
    body0 = _conv_weights(learn.model[0])
    watch = _BodyWatch()
    fit_pretrain(learn, 2, lr_max=1e-2, freeze_pct=freeze_pct, cbs=[watch.callback()])
    frozen = round(8 * freeze_pct)
    moved = [not all(torch.equal(a, b) for a, b in zip(body0, body)) for body, _ in watch.steps]
    assert moved == [False] * frozen + [True] * (8 - frozen)
    assert all(p.requires_grad for p in learn.model.parameters())  # thawed after the fit


def test_lr_mult_gives_the_body_a_lower_learning_rate(photo_dir):
    from colorgan.learner import fit_pretrain
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, epoch_batches=2, decode_workers=1)
    learn = pretrain_learner(dls, pretrained=False, width=0.25)
    fit_pretrain(learn, 1, lr_max=1e-2, lr_mult=100)
    body, decoder = (h["lr"] for h in learn.opt.hypers)
    assert decoder == pytest.approx(100 * body)


def test_a_run_logged_to_a_file_writes_a_line_an_epoch_not_the_bar(photo_dir, tmp_path, capfd, caplog, monkeypatch):
    "Output that is not a terminal (a file, a pipe; pytest's capture here) gets one log line an epoch, no bar."
    import logging

    import colorgan.train
    with caplog.at_level(logging.INFO, logger="colorgan"):
        pretrain(photo_dir, tmp_path / "file", recipe=tiny_recipe(model=TINY_MODEL, fit={"n_epoch": 2}))
    out = capfd.readouterr().out
    assert "train_loss" not in out and "\r" not in out and "█" not in out
    lines = [r.message for r in caplog.records if r.message.startswith("epoch ") and "train_loss" in r.message]
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2: train_loss ") and "valid_loss" in lines[1]
    monkeypatch.setattr(colorgan.train, "wants_bar", lambda: True)  # a terminal: fastai's bar and table
    pretrain(photo_dir, tmp_path / "tty", recipe=tiny_recipe(model=TINY_MODEL))
    assert "train_loss" in capfd.readouterr().out


def test_a_loss_that_diverges_on_another_rank_cancels_this_one_too(photo_dir, monkeypatch):
    "StopOnNaN's check is reduced across ranks: a finite loss here, a NaN on another process, and every rank stops."
    import colorgan.callbacks
    from colorgan.callbacks import StopOnNaN
    monkeypatch.setattr(colorgan.callbacks, "all_reduce_sum", lambda x: x + 1.0)  # another rank's loss was NaN
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, decode_workers=1)
    learn = pretrain_learner(dls, pretrained=False, width=0.25)
    guard = StopOnNaN()
    learn.fit(1, 1e-3, cbs=[guard])
    assert "not finite on another process" in guard.diverged and "batch 1" in guard.diverged
    assert len(learn.recorder.values) == 0  # cancelled at once, before any epoch was recorded


def test_colorgan_imports_and_caches_photos_without_posix_locks(photo_dir, tmp_path):
    "Windows has no fcntl (nor posix_fallocate): every command imports, and the photo cache is built without them."
    import subprocess
    import sys
    code = ("import os, sys; sys.modules['fcntl'] = None; del os.posix_fallocate; import colorgan.cli; "
            "from colorgan.data import photo_dls; "
            "dls = photo_dls(sys.argv[1], size=32, bs=4, valid_pct=0.25, cache_dir=sys.argv[2], decode_workers=1); "
            "print(len(dls.train.dataset) + len(dls.valid.dataset))")
    r = subprocess.run([sys.executable, "-c", code, str(photo_dir), str(tmp_path / "cache")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.split()[-1]) == 12 and list((tmp_path / "cache").glob("*.npy"))


def test_validation_converts_each_batch_to_rgb_once_a_side(photo_dir, monkeypatch):
    """The six colour metrics share one RGB picture of each side of a batch (the gamut mapping is the costly step):
    two conversions a batch, and the same numbers as each metric converting for itself."""
    import colorgan.metrics
    from colorgan.color import model_to_rgb, rgb_to_lab
    from colorgan.metrics import false_color, psnr, wrong_hue
    dls = photo_dls(photo_dir, size=32, bs=2, valid_pct=0.25, augment=False, decode_workers=1)
    learn = pretrain_learner(dls, pretrained=False, width=0.25)
    calls, real = [], colorgan.metrics.model_to_rgb
    monkeypatch.setattr(colorgan.metrics, "model_to_rgb", lambda l, ab: calls.append(1) or real(l, ab))
    values = learn.validate()
    values = dict(zip(learn.recorder.metric_names[2:-1], values))  # valid_loss, then the metrics
    assert len(calls) == 2 * len(dls.valid) and len(dls.valid) >= 2
    preds, targets = learn.get_preds(ds_idx=1)
    l = torch.cat([b[0] for b in dls.valid])
    pred_rgb, real_rgb = model_to_rgb(l, preds), model_to_rgb(l, targets)
    assert values["psnr"] == pytest.approx(psnr(pred_rgb, real_rgb).clamp(max=100).mean().item(), rel=1e-4)
    want = false_color(rgb_to_lab(pred_rgb), rgb_to_lab(real_rgb)).mean().item()
    assert values["false_color"] == pytest.approx(want, abs=1e-6)
    assert values["wrong_hue"] == pytest.approx(wrong_hue(rgb_to_lab(pred_rgb), rgb_to_lab(real_rgb)).mean().item(),
                                                abs=1e-6)
