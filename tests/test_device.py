"""The GPU path, exercised on the CPU: the device policy, mixed precision with a real loss scaler, torch.compile,
the optimizer every device shares, and optimizer state restored onto the model's device."""
from pathlib import Path

import pytest
import torch
from fastai.torch_core import set_seed

from colorgan import device as device_mod
from colorgan.callbacks import load_checkpoint
from colorgan.data import photo_dls
from colorgan.device import resolve_policy, resolve_precision
from colorgan.gan import gan_learner
from colorgan.inference import Colorizer
from colorgan.learner import AdamW, DeviceMixedPrecision, pretrain_learner
from colorgan.models import build_critic, build_generator
from colorgan.train import pretrain
from colorgan.utils import ColorganError
from conftest import TINY_MODEL, interrupted, tiny_recipe


@pytest.fixture
def dls(photo_dir):
    set_seed(0)
    return photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, decode_workers=1)


def _gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # emulation counts
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp16"), ((7, 0), "fp16"), ((8, 0), "bf16"),
                                                  ((9, 0), "bf16")])
def test_auto_precision_follows_the_compute_capability(monkeypatch, capability, expected):
    _gpu(monkeypatch, capability)
    assert resolve_precision("auto", "cuda:0") == expected
    assert resolve_precision("auto", "cpu") == "fp32"


@pytest.mark.parametrize("flags, expected", [("fpu avx2 avx512f", "fp32"), ("avx2 avx512f avx512_bf16", "bf16"),
                                             ("avx2 amx_bf16 amx_tile", "bf16"), ("", "fp32")])
def test_cpu_training_takes_bf16_only_where_the_cpu_has_bf16_units(monkeypatch, tmp_path, flags, expected):
    device = device_mod
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(device, "Path", lambda path: cpuinfo if path == "/proc/cpuinfo" else Path(path))
    monkeypatch.delenv("COLORGAN_CPU_BF16")
    device.cpu_flags.cache_clear()
    try:
        assert resolve_policy("cpu").precision == expected
        assert resolve_precision("auto", "cpu") == "fp32"  # colorize: fp32, the colours onnxruntime gives
        monkeypatch.setenv("COLORGAN_CPU_BF16", "1")
        assert resolve_policy("cpu").precision == "bf16"
        assert resolve_policy("cpu", precision="fp32").precision == "fp32"  # a named precision always wins
    finally:
        device.cpu_flags.cache_clear()


def test_bf16_is_refused_on_a_gpu_without_it(monkeypatch):
    _gpu(monkeypatch, (7, 5))
    with pytest.raises(ColorganError, match="Tesla T4 has no native bfloat16"):
        resolve_precision("bf16", "cuda:0")
    with pytest.raises(ColorganError, match="precision must be"):
        resolve_precision("bogus", "cpu")


def test_inference_uses_the_same_precision_rule(monkeypatch):
    _gpu(monkeypatch, (7, 5))
    monkeypatch.setattr(device_mod, "resolve_device", lambda device=None: torch.device("cuda", 0))
    monkeypatch.setattr("colorgan.inference.resolve_device", device_mod.resolve_device)
    net = build_generator(pretrained=False, width=0.25, img_size=32)
    net.to = lambda *a, **k: net  # no GPU to move to
    assert Colorizer(net, 32).precision == "fp16"


def test_a_missing_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ColorganError, match="no CUDA GPU"):
        resolve_policy("cuda")
    with pytest.raises(ColorganError, match="unknown device"):
        resolve_policy("bogus")


def test_the_policy_is_recorded_resolved(photo_dir, tmp_path):
    run = tmp_path / "run"
    pretrain(photo_dir, run, recipe=tiny_recipe(model=TINY_MODEL, fit={"n_epoch": 1}))
    text = (run / "recipe.resolved.toml").read_text()
    assert '"auto"' not in text
    for line in ('device = "cpu"', 'precision = "fp32"', "fused_adam = true", "channels_last = false",
                 "compile = false"):
        assert line in text, line


def test_bf16_reaches_the_critic_as_bf16(dls):
    "Bug: the GAN callback compared str(amp_mode) with 'bf16' and ran the critic in fp16 with a scaler."
    learn = gan_learner(dls, build_generator(pretrained=False, width=0.25, img_size=32), build_critic(n_filters=8),
                        precision="bf16")
    gan, seen = learn.conditional_gan, []
    judge = type(gan)._judge
    gan._judge = lambda ab, critic: seen.append(judge(gan, ab, critic).dtype) or judge(gan, ab, critic)
    learn.fit(1, 1e-3)
    assert gan.amp_dtype == torch.bfloat16 and not gan.critic_scaler.is_enabled()
    assert seen and set(seen) == {torch.bfloat16}
    assert any(isinstance(cb, DeviceMixedPrecision) for cb in learn.cbs)


@pytest.mark.parametrize("stage", ["pretrain", "gan"])
def test_compile_trains_both_stages(dls, stage):
    "Bug: fastai's ToTensorBase recursed without end under torch.compile, with every backend."
    net = build_generator(pretrained=False, width=0.25, img_size=32)
    if stage == "pretrain":
        learn = pretrain_learner(dls, model=net, compile="eager")
    else:
        learn = gan_learner(dls, net, build_critic(n_filters=8), compile="eager")
    before = [p.detach().clone() for p in learn.model.parameters()]
    learn.fit(1, 1e-3)
    assert any(not torch.equal(a, p) for a, p in zip(before, learn.model.parameters()))
    assert learn.policy.compile == "eager"


def test_optimizer_state_lands_on_the_models_device(photo_dir, tmp_path, dls):
    "Bug: --resume loaded the optimizer state while the model was still on the CPU (a GPU run then failed)."
    run = tmp_path / "run"
    interrupted(pretrain, photo_dir, run, recipe=tiny_recipe(model=TINY_MODEL, fit={"n_epoch": 2}))
    learn = pretrain_learner(dls, pretrained=False, width=0.25, fused_adam=False)
    learn.dls.device = torch.device("meta")  # stands in for a GPU: no data, every tensor must follow
    load_checkpoint(learn, run)
    state = [t for s in learn.opt.state_dict()["state"].values() for t in s.values() if torch.is_tensor(t)]
    assert state and {t.device.type for t in state if t.ndim} == {"meta"}


def test_one_optimizer_on_every_device(dls):
    """fastai Adam's hyperparameters in torch's AdamW, fused or not; weight decay skips biases and norm weights;
    state written by the fused kernel loads into the plain one (a GPU checkpoint resumes on a CPU)."""
    learns = [pretrain_learner(dls, pretrained=False, width=0.25, fused_adam=f, wd=0.1) for f in (True, False)]
    for learn in learns:
        learn.create_opt()
        assert isinstance(learn.opt.opt, AdamW)
        group = learn.opt.opt.param_groups[0]
        assert group["eps"] == 1e-5 and group["betas"][1] == 0.99
    learn = learns[0]
    weights = [p for p in learn.model.parameters() if p.ndim > 1][:3]
    flat = [p for p in learn.model.parameters() if p.ndim == 1][:3]
    before = [p.detach().clone() for p in weights + flat]
    for p in learn.model.parameters():
        p.grad = torch.zeros_like(p)
    learn.opt.set_hypers(lr=0.5, wd=0.1)  # as fit sets them
    learn.opt.step()
    assert all(torch.allclose(p, b * (1 - 0.5 * 0.1)) for p, b in zip(weights, before))
    assert all(torch.equal(p, b) for p, b in zip(flat, before[len(weights):]))
    learns[1].model.load_state_dict(learn.model.state_dict())
    learns[1].opt.load_state_dict(learn.opt.state_dict())


@pytest.mark.slow
def test_fp16_scaler_skips_an_overflow_and_resumes_from_its_scale(photo_dir, tmp_path, monkeypatch):
    """CPU fp16 autocast with a real GradScaler: an infinite gradient skips the step and halves the scale; the
    scale is checkpointed and a resumed run starts from it, not from 65536."""
    from colorgan import learner as learner_mod
    run = tmp_path / "run"
    recipe = tiny_recipe(model=TINY_MODEL, learner={"precision": "fp16"}, fit={"n_epoch": 2})
    seen = {}
    before_step = learner_mod.DeviceMixedPrecision.before_step

    def overflow_once(self):
        if "skipped" in seen:
            return before_step(self)
        next(self.model.parameters()).grad.fill_(float("inf"))
        try:
            before_step(self)
        finally:
            seen["skipped"] = self.skipped
    monkeypatch.setattr(learner_mod.DeviceMixedPrecision, "before_step", overflow_once)
    interrupted(pretrain, photo_dir, run, recipe=recipe)
    assert seen["skipped"] is True
    saved = torch.load(run / "checkpoints/last.pth", weights_only=True)["scaler"]["scale"]
    assert saved < 65536.0

    starts = []
    fit_start = learner_mod.DeviceMixedPrecision.before_fit
    monkeypatch.setattr(learner_mod.DeviceMixedPrecision, "before_fit",
                        lambda self: (fit_start(self), starts.append(self.learn.scaler.get_scale())))
    pretrain(photo_dir, run, resume=True)
    assert starts == [saved]


@pytest.mark.slow
def test_gan_stage_in_bf16_interrupted_and_resumed(photo_dir, tmp_path):
    "Stage two through the GPU's code path on the CPU: bf16 autocast, a checkpoint, --resume onto the same state."
    stage_one = tmp_path / "g"
    pretrain(photo_dir, stage_one, recipe=tiny_recipe(model=TINY_MODEL))
    run, recipe = tmp_path / "gan", tiny_recipe(critic={"n_filters": 8}, learner={"precision": "bf16"},
                                                fit={"n_epoch": 2})
    from colorgan.train import gan_finetune
    interrupted(gan_finetune, photo_dir, stage_one, run, recipe=recipe)
    learn = gan_finetune(photo_dir, stage_one, run, resume=True)
    assert learn.policy.precision == "bf16" and learn.conditional_gan.amp_dtype == torch.bfloat16
    assert [row.split(",")[0] for row in (run / "history.csv").read_text().splitlines()[1:]] == ["0", "1"]


@pytest.mark.parametrize("named, distributed, recorded", [(None, True, "cuda"), (None, False, "cuda"),
                                                          ("cuda:1", False, "cuda:1"), ("cuda:1", True, "cuda")])
def test_a_resumed_rank_takes_its_own_gpu(tmp_path, monkeypatch, named, distributed, recorded):
    "The resolved recipe records the device type, never rank 0's index: on --resume each rank takes its own GPU."
    from types import SimpleNamespace
    import colorgan.train
    from colorgan.device import DevicePolicy
    monkeypatch.setattr(colorgan.train, "is_distributed", lambda: distributed)
    learn = SimpleNamespace(policy=DevicePolicy("cuda:0" if named is None else named, "bf16", True, True, False))
    recipe = {"data": {"device": named}, "learner": {}}
    colorgan.train._record_policy(learn, tmp_path, recipe)
    assert recipe["data"]["device"] == recorded
    assert f'device = "{recorded}"' in (tmp_path / "recipe.resolved.toml").read_text()
