"Stage one on stored features of the frozen body (colorgan.features)."
import pytest
import torch
from fastai.callback.core import Callback

import colorgan.features
from colorgan.data import photo_dls
from colorgan.features import FrozenFeatures, skip_hooks
from colorgan.learner import fit_pretrain, pretrain_learner
from colorgan.recipes import RecipeError
from colorgan.train import pretrain
from colorgan.utils import ColorganError
from conftest import tiny_recipe


def _learner(photo_dir, views=2, **kwargs):
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=True, epoch_batches=3, decode_workers=1)
    return pretrain_learner(dls, pretrained=False, width=0.25, feature_views=views, **kwargs)


class _Check(Callback):
    """After each training prediction: the features the decoder read, against the body run now in eval mode on the
    batch's L; and whether the body itself ran for that prediction."""
    order = 90

    def __init__(self):
        self.checked, self.body_ran, self.calls = [], [], 0

    def before_fit(self):
        self.body = self.learn.model[0]
        self.handle = self.body[0].register_forward_hook(lambda *a: setattr(self, "calls", self.calls + 1))

    def before_batch(self): self.calls = 0

    def after_pred(self):
        if not self.training:
            return
        self.body_ran.append(self.calls > 0)
        hooks = skip_hooks(self.learn.model)
        used = [h.stored.detach().clone() for h in hooks]
        with torch.no_grad():
            self.body.eval()
            type(self.body).forward(self.body, self.learn.xb[0])
            self.body.train()
        self.checked.append(all(torch.allclose(u, h.stored, atol=1e-5) for u, h in zip(used, hooks)))

    def after_fit(self): self.handle.remove()


def test_the_decoder_trains_on_the_bodys_features_of_the_same_crops(photo_dir, monkeypatch):
    learn = _learner(photo_dir)
    body0 = [p.detach().clone() for p in learn.model[0].parameters()]
    decoder0 = [p.detach().clone() for p in learn.model.layers[1:].parameters()]
    computed = []
    real = colorgan.features.compute_views
    monkeypatch.setattr(colorgan.features, "compute_views", lambda *a, **k: computed.append(1) or real(*a, **k))
    check = _Check()
    learn.fit_one_cycle(2, 1e-2, cbs=[check])
    assert check.checked == [True] * 6  # every step: the features of the crop whose L and ab it trained on
    assert check.body_ran == [False] * 6  # and the body itself never ran on a training batch
    assert all(torch.equal(a, b) for a, b in zip(body0, learn.model[0].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(decoder0, learn.model.layers[1:].parameters()))
    assert all(p.requires_grad for p in learn.model.parameters())  # the body trainable again after the fit
    assert "forward" not in vars(learn.model[0])  # the body's own forward again: no instance attribute left
    assert learn.dls.train.views is None
    learn.fit(1, 1e-3)
    assert computed == [1]  # the same body and photos: computed once
    with torch.no_grad():
        next(learn.model[0].parameters()).mul_(0.5)
    learn.fit(1, 1e-3)
    assert computed == [1, 1]  # the body changed: its stored features are stale


def test_each_photo_is_one_of_its_stored_views(photo_dir):
    learn = _learner(photo_dir, views=2)
    views = []

    class Seen(Callback):
        def before_batch(self):
            if self.training:
                views.append(self.learn.xb[0].clone())
    learn.fit(3, 1e-3, cbs=[Seen()])
    stored = learn.cbs.filter(lambda c: isinstance(c, FrozenFeatures))[0].views
    assert stored.thetas.shape == (len(learn.dls.train.dataset), 2, 2, 3)
    seen = torch.cat(views)
    # 9 batches of 4 from 2 views of 9 photos: some photo came back in a crop seen before, none in a new crop
    distinct = torch.unique(seen.flatten(1).round(decimals=4), dim=0)
    assert len(distinct) <= 2 * len(learn.dls.train.dataset) < len(seen)


def test_a_body_thawed_during_the_fit_is_an_error(photo_dir):
    learn = _learner(photo_dir)
    with pytest.raises(ColorganError, match="thawed"):
        fit_pretrain(learn, 2, lr_max=1e-3, freeze_pct=0.5)


def test_a_recipe_that_thaws_the_body_is_refused_before_anything_is_written(photo_dir, tmp_path):
    out = tmp_path / "run"
    recipe = tiny_recipe(model={"pretrained": False, "width": 0.25}, learner={"feature_views": 2},
                         fit={"freeze_pct": 0.5})
    with pytest.raises(RecipeError, match="freeze_pct"):
        pretrain(photo_dir, out, recipe)
    assert not out.exists()


def test_features_that_do_not_fit_in_memory_are_refused(photo_dir, monkeypatch):
    monkeypatch.setattr(colorgan.features, "_free_bytes", lambda: 1 << 20)
    learn = _learner(photo_dir)
    with pytest.raises(ColorganError, match="fewer views"):
        learn.fit(1, 1e-3)


def test_an_exported_learner_carries_no_features(photo_dir, tmp_path):
    learn = _learner(photo_dir)
    learn.fit(1, 1e-3)
    from fastai.learner import load_learner
    assert learn.cbs.filter(lambda c: isinstance(c, FrozenFeatures))[0].views is not None
    learn.export(tmp_path / "export.pkl")
    loaded = load_learner(tmp_path / "export.pkl")
    assert loaded.cbs.filter(lambda c: isinstance(c, FrozenFeatures))[0].views is None
    import skimage.data
    from PIL import Image
    photo = Image.fromarray(skimage.data.astronaut()).resize((40, 32))
    assert torch.allclose(loaded.predict(photo)[1], learn.predict(photo)[1], atol=1e-5)  # and it predicts


def test_off_with_a_warning_under_several_processes(photo_dir, monkeypatch, caplog):
    monkeypatch.setattr(colorgan.features, "is_distributed", lambda: True)
    learn = _learner(photo_dir)
    check = _Check()
    learn.fit(1, 1e-3, cbs=[check])
    assert check.body_ran == [True] * 3 and "FrozenFeatures is off" in caplog.text


def test_a_budgeted_run_on_stored_features(photo_dir, tmp_path):
    "The budget's probe times steps on the stored features; the run writes a generator that loads."
    from colorgan.artifacts import load_generator
    out = tmp_path / "run"
    recipe = tiny_recipe(model={"pretrained": False, "width": 0.25}, learner={"feature_views": 2},
                         fit={"freeze_pct": 1.0}, data={"augment": True})
    recipe["fit"].pop("n_epoch")
    pretrain(photo_dir, out, recipe, minutes=0.2)
    net, meta = load_generator(out / "generator.pth")
    assert meta["recipe"]["learner"]["feature_views"] == 2


def test_without_augmentation_one_view_of_each_photo_is_computed_once(photo_dir, monkeypatch):
    "augment=False: the whole photo is the one view, whatever the views asked for; a second fit reuses it."
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, epoch_batches=3, decode_workers=1)
    learn = pretrain_learner(dls, pretrained=False, width=0.25, feature_views=3)
    computed, real = [], colorgan.features.compute_views
    monkeypatch.setattr(colorgan.features, "compute_views", lambda *a, **k: computed.append(1) or real(*a, **k))
    learn.fit(1, 1e-3)
    learn.fit(1, 1e-3)
    views = learn.cbs.filter(lambda c: isinstance(c, FrozenFeatures))[0].views
    assert views.n_views == 1 and computed == [1]


def test_predict_validate_and_an_exported_learner_compute_no_features(photo_dir, tmp_path, monkeypatch, astronaut):
    """fastai's validate, get_preds and predict open a fit of their own: a stored-features Learner answers them
    without computing features, before its first fit and after export/load_learner (cpu=True)."""
    from fastai.learner import load_learner
    learn = _learner(photo_dir, views=3)
    computed, real = [], colorgan.features.compute_views
    monkeypatch.setattr(colorgan.features, "compute_views", lambda *a, **k: computed.append(1) or real(*a, **k))
    ab = learn.predict(astronaut)[1]
    learn.validate()
    learn.get_preds(dl=learn.dls.test_dl([astronaut]))
    assert computed == [] and ab.shape == (2, 32, 32)
    learn.fit(1, 1e-3)
    assert computed == [1]
    learn.export(tmp_path / "export.pkl")
    again = load_learner(tmp_path / "export.pkl", cpu=True)
    assert torch.allclose(again.predict(astronaut)[1], learn.predict(astronaut)[1], atol=1e-5)
    assert computed == [1]


def test_off_with_a_warning_when_the_model_is_compiled_in_place(photo_dir, caplog, monkeypatch):
    "colorgan's `compile` compiles the model in place (Module.compile): no features stored, the body runs each step."
    learn = _learner(photo_dir, compile="eager")
    computed = []
    monkeypatch.setattr(colorgan.features, "compute_views", lambda *a, **k: computed.append(1))
    learn.fit(1, 1e-3)
    features = learn.cbs.filter(lambda c: isinstance(c, FrozenFeatures))[0]
    assert computed == [] and features.views is None and "the model is compiled" in caplog.text


def test_a_resume_that_would_thaw_the_body_is_refused_before_any_feature_is_computed(photo_dir, tmp_path,
                                                                                    monkeypatch):
    from conftest import interrupted
    out = tmp_path / "run"
    recipe = tiny_recipe(model={"pretrained": False, "width": 0.25}, learner={"feature_views": 2},
                         fit={"freeze_pct": 1.0, "n_epoch": 2}, data={"augment": True})
    interrupted(pretrain, photo_dir, out, recipe)
    computed = []
    monkeypatch.setattr(colorgan.features, "compute_views", lambda *a, **k: computed.append(1))
    with pytest.raises(RecipeError, match="freeze_pct"):
        pretrain(photo_dir, out, resume=True, overrides=["fit.freeze_pct=0.5"])
    assert computed == []


def test_the_features_room_is_what_the_process_may_take(monkeypatch):
    """The memory available (page cache counts as room), and no more than a container's limit or `ulimit -v`
    leaves: the least of them."""
    monkeypatch.setattr(colorgan.features, "_meminfo_available", lambda: 19 << 30)
    monkeypatch.setattr(colorgan.features, "_cgroup_room", lambda: None)
    monkeypatch.setattr(colorgan.features, "_address_space_room", lambda: None)
    assert colorgan.features._free_bytes() == 19 << 30
    monkeypatch.setattr(colorgan.features, "_cgroup_room", lambda: 3 << 30)
    assert colorgan.features._free_bytes() == 3 << 30
    monkeypatch.setattr(colorgan.features, "_address_space_room", lambda: 1 << 30)
    assert colorgan.features._free_bytes() == 1 << 30
    with pytest.raises(ColorganError, match="can still take"):
        colorgan.features._check_room(1 << 20, 1000, 3)  # 2.9 GiB asked of a 1 GiB limit


def test_an_address_space_limit_is_read_as_room():
    "Under `ulimit -v` (here set in a child process) the room is the limit less what the process has mapped."
    import subprocess
    import sys
    code = ("import resource, colorgan.features as f; "
            "size = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:')); "
            "resource.setrlimit(resource.RLIMIT_AS, (size + (4 << 30), resource.RLIM_INFINITY)); "
            "print(f._address_space_room())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    room = int(out.stdout.split()[-1])
    assert 3.5 * 2 ** 30 < room <= 4 << 30, out.stderr[-1000:]
