import pytest
from click.testing import CliRunner

from colorgan import __version__
from colorgan.cli import main

TINY_TOML = """
[data]
size = 32
bs = 4
valid_pct = 0.25
augment = false
[model]
pretrained = false
width = 0.25
[fit]
n_epoch = 1
lr_max = 1e-3
"""
TINY_GAN_TOML = TINY_TOML.replace("[model]\npretrained = false\nwidth = 0.25\n", "[critic]\nn_filters = 8\n")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_and_version():
    assert run("--help").exit_code == 0
    out = run("--version").output
    assert __version__ in out
    for command in ["pretrain", "gan-finetune", "sample-photos"]:
        assert run(command, "--help").exit_code == 0


def test_both_stages_end_to_end(photo_dir, tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    (tmp_path / "tiny-gan.toml").write_text(TINY_GAN_TOML)
    r = run("pretrain", photo_dir, "--recipe", tmp_path / "tiny.toml", "--out", tmp_path / "g", "--set", "fit.lr_max=2e-3")
    assert r.exit_code == 0, r.output
    assert "lr_max = 0.002" in (tmp_path / "g" / "recipe.resolved.toml").read_text()
    r = run("gan-finetune", photo_dir, "--generator", tmp_path / "g", "--recipe", tmp_path / "tiny-gan.toml",
            "--out", tmp_path / "gan")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "gan" / "generator.pth").is_file() and (tmp_path / "gan" / "critic.pth").is_file()
    r = run("pretrain", photo_dir, "--recipe", tmp_path / "tiny.toml", "--out", tmp_path / "g")
    assert r.exit_code == 1 and "already holds a run" in r.output


@pytest.mark.parametrize("args, message", [
    (["pretrain", "{tmp}/nowhere", "--out", "{tmp}/r", "--no-pretrained", "--set", "fit.n_epoch=1"], "does not exist"),
    (["pretrain", "{photos}", "--out", "{tmp}/r", "--set", "fit.n_epochs=1"], "did you mean 'n_epoch'"),
    (["pretrain", "{photos}", "--out", "{tmp}/r", "--recipe", "{tmp}/missing.toml"], "missing.toml does not exist"),
    (["gan-finetune", "{photos}", "--generator", "{tmp}/nope", "--out", "{tmp}/r"], "does not exist"),
    (["gan-finetune", "{photos}", "--generator", "{tmp}", "--out", "{tmp}/r"], "without generator.pth"),
    (["pretrain", "{photos}", "--out", "{tmp}/r", "--resume"], "nothing to resume"),
])
def test_bad_input_exits_non_zero_with_a_message(photo_dir, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, photos=photo_dir) for a in args]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and message in r.output, r.output
    assert "Traceback" not in r.output


def test_sample_photos(tmp_path):
    r = run("sample-photos", tmp_path / "s")
    assert r.exit_code == 0 and len(list((tmp_path / "s").glob("*.jpg"))) == 50


def test_weights_option_reaches_the_model(photo_dir, tmp_path):
    import timm
    import torch
    weights = tmp_path / "it's resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), weights)
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    r = run("pretrain", photo_dir, "--recipe", tmp_path / "tiny.toml", "--out", tmp_path / "r", "--weights", weights,
            "--set", "model.width=1.0")
    assert r.exit_code == 0, r.output
    assert "it's resnet18.pth" in (tmp_path / "r" / "recipe.resolved.toml").read_text()


def test_env_prints_versions_devices_and_the_policy():
    import torch
    out = run("env").output
    assert f"torch        {torch.__version__}" in out and "fastai" in out and "timm" in out
    assert "cpu " in out and "policy       device " in out
    if not torch.cuda.is_available():
        assert "device cpu, precision fp32" in out
    result = CliRunner().invoke(main, ["env", "--device", "bogus"])
    assert result.exit_code == 1 and "unknown device 'bogus'" in result.output


def test_importing_colorgan_sets_up_no_logging_warnings_or_cudnn():
    import subprocess
    import sys
    code = """
import logging, warnings, torch
import colorgan, colorgan.train, colorgan.inference, colorgan.serve
ours = lambda: [f for f in warnings.filters if f[1] is not None and "jit" in f[1].pattern and "script" in f[1].pattern]
assert not logging.getLogger("colorgan").handlers, logging.getLogger("colorgan").handlers
assert not ours(), warnings.filters
assert torch.backends.cudnn.benchmark is False
from colorgan.utils import enable_logging
enable_logging(); enable_logging()
assert len(logging.getLogger("colorgan").handlers) == 1 and len(ours()) >= 1  # what the command sets up
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_command_options_default_to_the_library_signature(monkeypatch, tmp_path):
    "Each default lives once: an option not given is not passed, so the library's own default applies."
    import colorgan.export
    seen = {}
    monkeypatch.setattr(colorgan.export, "export_onnx", lambda model, path, **kw: seen.update(kw) or [])
    assert run("export", tmp_path / "g.pth", "--onnx", tmp_path / "g.onnx").exit_code == 0
    assert seen == {}
    assert run("export", tmp_path / "g.pth", "--onnx", tmp_path / "g.onnx", "--opset", "18").exit_code == 0
    assert seen == {"opset": 18}


def test_export_raises_no_deprecation_of_its_own(artefact, tmp_path):
    "The TorchScript exporter is chosen knowingly (colorgan.export): its notice is silenced there, nowhere else."
    import warnings

    from colorgan.export import export_onnx
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        export_onnx(artefact, tmp_path / "g.onnx")
    ours = [w for w in seen if issubclass(w.category, DeprecationWarning)
            and ("onnx" in str(w.filename) or "colorgan" in str(w.filename))]  # torch names the caller's line
    assert not ours, [str(w.message)[:80] for w in ours]
