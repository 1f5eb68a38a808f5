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
from conftest import interrupted, tiny_recipe


def _l1(learn, dl):
    return learn.validate(dl=dl)[0]


def test_training_lowers_l1_on_a_fixed_set(photo_dir):
    set_seed(0)
    dls = photo_dls(photo_dir, size=32, bs=2, valid_pct=0.25, augment=False, num_workers=1)
    learn = pretrain_learner(dls, pretrained=False)
    fixed = dls.train.new(shuffle=False, drop_last=False)
    before = _l1(learn, fixed)
    learn.fit_one_cycle(8, 3e-3)
    after = _l1(learn, fixed)
    assert after < 0.9 * before, (before, after)  # seen: 0.152 -> 0.127; a fresh net predicts about gray


def test_pretrain_writes_the_run_folder(photo_dir, tmp_path):
    run = tmp_path / "run"
    learn = pretrain(photo_dir, run, recipe=tiny_recipe(model={"pretrained": False}))
    for name in ["generator.pth", "recipe.resolved.toml", "history.csv", "samples/epoch_001.png",
                 "checkpoints/last.pth", "checkpoints/best.pth"]:
        assert (run / name).is_file(), name
    net, meta = load_generator(run)
    assert meta["size"] == 32 and meta["stage"] == "pretrain" and meta["recipe"]["fit"]["n_epoch"] == 1
    assert meta["build"]["arch"] == "resnet18"
    for k, v in learn.model.state_dict().items():
        assert torch.equal(net.state_dict()[k], v.cpu()), k
    with pytest.raises(ColorganError, match="already holds a run"):
        pretrain(photo_dir, run, recipe=tiny_recipe(model={"pretrained": False}))


def _read_history(run):
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def test_resume_continues_from_the_saved_epoch(photo_dir, tmp_path, monkeypatch):
    run, recipe = tmp_path / "run", tiny_recipe(model={"pretrained": False}, fit={"n_epoch": 3})
    interrupted(pretrain, photo_dir, run, recipe=recipe)
    first = _read_history(run)
    saved = torch.load(run / "checkpoints/last.pth", weights_only=True)
    assert len(first) == 1 and saved["epoch"] == 1 and not (run / "generator.pth").exists()
    assert saved["best"] == pytest.approx(float(first[0]["valid_loss"]))  # the checkpoint knows this epoch's score

    seen = []
    monkeypatch.setattr(RunCheckpoint, "before_fit", lambda self: seen.append(
        {k: v.clone() for k, v in self.model.state_dict().items()}) or setattr(self, "sample", None))
    pretrain(photo_dir, run, resume=True)
    rows = _read_history(run)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["train_loss"] == first[0]["train_loss"]  # the interrupted epoch's numbers, replayed
    assert not (run / "samples/epoch_001.png").stat().st_mtime > (run / "samples/epoch_002.png").stat().st_mtime
    assert all(torch.equal(seen[0][k], v) for k, v in saved["model"].items())  # started from the checkpoint
    assert torch.load(run / "checkpoints/last.pth", weights_only=True)["epoch"] == 3


def test_resume_without_a_run_is_a_clear_error(photo_dir, tmp_path):
    with pytest.raises(ColorganError, match="nothing to resume"):
        pretrain(photo_dir, tmp_path / "never", resume=True)


def test_fused_adamw_trains_and_checkpoints(photo_dir, tmp_path):
    "The GPU's optimizer (torch's fused AdamW under fastai's OptimWrapper) also runs on CPU, and resumes."
    run = tmp_path / "run"
    recipe = tiny_recipe(model={"pretrained": False}, learner={"fused_adam": True}, fit={"n_epoch": 1})
    learn = pretrain(photo_dir, run, recipe=recipe)
    assert type(learn.opt).__name__ == "OptimWrapper" and learn.opt.opt.defaults["fused"]
    learn = pretrain(photo_dir, run, resume=True, overrides=["fit.n_epoch=2"])
    assert torch.load(run / "checkpoints/last.pth", weights_only=True)["epoch"] == 2


def test_overwrite_removes_only_what_a_run_wrote(photo_dir, tmp_path):
    run = tmp_path / "run"
    recipe = tiny_recipe(model={"pretrained": False})
    pretrain(photo_dir, run, recipe=recipe)
    (run / "notes.txt").write_text("mine")
    pretrain(photo_dir, run, recipe=recipe, overwrite=True)
    assert (run / "notes.txt").read_text() == "mine" and (run / "generator.pth").is_file()
