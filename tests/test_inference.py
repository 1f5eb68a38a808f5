import io
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from colorgan.cli import main
from colorgan.photos import pil_to_l
from colorgan.inference import Colorizer, render_shape, resolve_engine
from colorgan.metrics import ciede2000, colorfulness, psnr, ssim
from colorgan.utils import ColorganError


@pytest.fixture(scope="module")
def colorizer(artefact):
    return Colorizer.from_artifact(artefact, device="cpu")


def _as(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (101, 33), (1, 9)])
def test_output_size_equals_input_size(colorizer, size):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8))
    assert colorizer(img).size == img.size


def test_render_shape_keeps_the_training_scale_and_is_bounded():
    "The short side at the render size, as the training photos' short side was; multiples of 32; bounded."
    assert render_shape(4000, 6000, 256) == (256, 384)
    assert render_shape(6000, 4000, 64) == (96, 64)
    assert render_shape(9, 1, 256) == (768, 96)  # a long strip: the long side is capped at 3x


def test_luminance_is_kept(colorizer, astronaut):
    out = colorizer(astronaut.convert("L"))
    l_in, l_out = pil_to_l(astronaut.convert("L")), pil_to_l(out)
    assert (l_in - l_out).abs().mean() < 1.0  # 8-bit rounding and gamut clipping only
    assert colorfulness(torch.from_numpy(np.asarray(out)).permute(2, 0, 1)[None] / 255.0) > 1


@pytest.mark.parametrize("make", [
    lambda im: im.convert("L"), lambda im: im, lambda im: im.convert("LA"), lambda im: im.convert("P"),
    lambda im: im.convert("CMYK"),
    lambda im: _as(Image.fromarray((np.asarray(im.convert("L"), dtype=np.uint16) * 257)), "PNG"),
])
def test_input_kinds(colorizer, astronaut, make):
    img = make(astronaut)
    out = colorizer(img)
    assert out.mode == "RGB" and out.size == astronaut.size
    assert (pil_to_l(out) - pil_to_l(img)).abs().mean() < 1.0  # the photo's own lightness, whatever its mode


class AtTheBounds(torch.nn.Module):
    "A generator that predicts the most extreme chroma it can, everywhere: a and b at +-1 in a checkerboard."
    def forward(self, x):
        n, _, h, w = x.shape
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        signs = torch.stack([(-1.0) ** (yy // 4), (-1.0) ** (xx // 4)])
        return signs.expand(n, 2, h, w).to(x.dtype)


@pytest.mark.parametrize("make", [
    lambda im: im.convert("L"), lambda im: im, lambda im: im.convert("CMYK"),
    lambda im: _as(Image.fromarray((np.asarray(im.convert("L"), dtype=np.uint16) * 257)), "PNG"),
], ids=["gray", "colour", "cmyk", "16-bit"])
@pytest.mark.parametrize("saturation", [1.0, 3.0])
def test_lightness_is_kept_at_every_pixel_whatever_the_model_predicts(astronaut, make, saturation):
    img = make(astronaut)
    out = Colorizer(AtTheBounds(), render_size=32, device="cpu", saturation=saturation)(img)
    drift = (pil_to_l(out) - pil_to_l(img)).abs()
    assert drift.max() < 1.0, f"max |dL| {drift.max():.2f}"  # per-channel clipping moved it by over 10
    assert colorfulness(torch.from_numpy(np.asarray(out)).permute(2, 0, 1)[None] / 255.0) > 20


def test_saturation_zero_gives_the_gray_photo_back_and_more_saturation_more_colour(colorizer, astronaut):
    gray = astronaut.convert("L")
    colorizer.saturation = 0.0
    try:
        back = np.asarray(colorizer(gray))
        assert (back == np.asarray(gray)[..., None]).all()
        cf = {}
        for s in (0.5, 1.0, 2.0):
            colorizer.saturation = s
            cf[s] = colorfulness(torch.from_numpy(np.asarray(colorizer(gray))).permute(2, 0, 1)[None] / 255.0)
        assert cf[0.5] < cf[1.0] < cf[2.0]
    finally:
        colorizer.saturation = 1.0
    with pytest.raises(ColorganError, match="saturation"):
        colorizer.saturation = -1


def test_a_batch_gives_what_one_by_one_gives_for_any_strip_height(artefact, astronaut):
    photos = [astronaut, astronaut.convert("L").resize((70, 50)), astronaut.rotate(90, expand=True)]
    one_by_one = [np.asarray(Colorizer.from_artifact(artefact, device="cpu")(p)) for p in photos]
    for rows in (7, 256):
        batch = Colorizer.from_artifact(artefact, device="cpu")
        batch.strip_rows = rows
        assert all((np.asarray(a) == b).all() for a, b in zip(batch.colorize(photos), one_by_one))


def test_engines_agree_and_onnxruntime_is_exported_once(artefact, astronaut, monkeypatch):
    pytest.importorskip("onnxruntime")
    ours = Colorizer.from_artifact(artefact, device="cpu", engine="onnxruntime")
    torch_one = Colorizer.from_artifact(artefact, device="cpu", engine="torch")
    assert (ours.engine, torch_one.engine) == ("onnxruntime", "torch")
    l = ours.lightness(astronaut)
    assert (ours.predict_ab([l])[0] - torch_one.predict_ab([l])[0]).abs().max() < 1e-3
    diff = np.abs(np.asarray(ours(astronaut), dtype=int) - np.asarray(torch_one(astronaut), dtype=int))
    assert diff.max() <= 1
    import colorgan.export
    monkeypatch.setattr(colorgan.export, "export_onnx", lambda *a, **k: pytest.fail("exported twice"))
    assert Colorizer.from_artifact(artefact, device="cpu").engine == "onnxruntime"  # auto, from the cache


def test_engine_choice_and_its_refusals():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_engine("auto", gpu, "bf16") == "torch" and resolve_engine("auto", cpu, "bf16") == "torch"
    assert resolve_engine("torch", cpu, "fp32") == "torch"
    with pytest.raises(ColorganError, match="engine must be one of"):
        resolve_engine("tensorrt", cpu, "fp32")
    with pytest.raises(ColorganError, match="--engine torch"):
        resolve_engine("onnxruntime", gpu, "fp32")


def test_exif_rotation_is_applied(colorizer, astronaut):
    exif = Image.Exif()
    exif[0x0112] = 6
    out = colorizer(_as(astronaut, "JPEG", exif=exif))
    assert out.size == (astronaut.height, astronaut.width)
    upright = _as(astronaut, "JPEG").transpose(Image.Transpose.ROTATE_270)  # orientation 6: turned 90 degrees clockwise
    assert (pil_to_l(out) - pil_to_l(upright)).abs().mean() < 1.0  # turned the right way, not merely resized


def test_metrics_agree_with_skimage(astronaut):
    a = np.asarray(astronaut) / 255.0
    b = np.clip(a + np.random.default_rng(1).normal(0, 0.05, a.shape), 0, 1)
    t = lambda x: torch.tensor(x, dtype=torch.float32).permute(2, 0, 1)[None]
    assert psnr(t(a), t(b)).item() == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-3)
    ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=1.0, channel_axis=-1)
    assert ssim(t(a), t(b)).item() == pytest.approx(ref, abs=1e-4)
    la, lb = rgb2lab(a), rgb2lab(b)
    assert np.abs(ciede2000(t(la), t(lb))[0].numpy() - deltaE_ciede2000(la, lb)).max() < 1e-3
    # Sharma, Wu and Dalal's published test pairs
    pairs = torch.tensor([[50, 2.6772, -79.7751, 50, 0, -82.7485, 2.0425],
                          [50, -1.3802, -84.2814, 50, 0, -82.7485, 1.0],
                          [50, 2.5, 0, 73, 25, -18, 27.1492]]).double()
    got = ciede2000(pairs[:, :3, None, None], pairs[:, 3:6, None, None]).flatten()
    assert torch.allclose(got.double(), pairs[:, 6], atol=1e-3)


def test_colourfulness_of_gray_is_zero_and_of_colour_is_not(astronaut):
    gray = torch.rand(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert colorfulness(gray).item() == 0
    assert colorfulness(torch.from_numpy(np.asarray(astronaut)).permute(2, 0, 1)[None] / 255.0).item() > 20


def test_colorize_cli_mirrors_inputs_and_survives_a_corrupt_file(artefact, tmp_path, photo_dir):
    src = tmp_path / "in"
    (src / "nested").mkdir(parents=True)
    files = sorted(photo_dir.glob("*.jpg"))[:3]
    Image.open(files[0]).save(src / "a.jpg")
    Image.open(files[1]).convert("L").save(src / "nested" / "b.png")
    (src / "broken.jpg").write_bytes(b"not a photo")
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["colorize", str(artefact), str(src), str(files[2]), "--out", str(out), "--compare"])
    assert r.exit_code == 1, r.output
    assert "broken.jpg" in r.output and "3 colorized, 0 kept, 1 failed" in r.output
    assert (out / "a.jpg").is_file() and (out / "nested" / "b.png").is_file() and (out / files[2].name).is_file()
    assert (out / "a_compare.jpg").is_file()
    assert Image.open(out / "nested" / "b.png").size == Image.open(src / "nested" / "b.png").size
    assert before == {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}  # inputs untouched
    stamp = (out / "a.jpg").stat().st_mtime_ns
    r = CliRunner().invoke(main, ["colorize", str(artefact), str(src / "a.jpg"), "--out", str(out)])
    assert r.exit_code == 0 and "1 kept" in r.output and (out / "a.jpg").stat().st_mtime_ns == stamp
    r = CliRunner().invoke(main, ["colorize", str(artefact), str(src / "a.jpg"), "--out", str(src)])
    assert r.exit_code == 1 and "overwrite an input" in r.output and before[src / "a.jpg"] == (src / "a.jpg").read_bytes()


def test_evaluate_writes_metrics_with_the_gray_floor(artefact, photo_dir, tmp_path):
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, ["evaluate", str(artefact), str(photo_dir), "--out", str(out), "--baseline", "gray"])
    assert r.exit_code == 0, r.output
    result = json.loads((out / "metrics.json").read_text())
    assert "centre-cropped to 256x256" in result["protocol"] and result["n_images"] == 12
    gray, model = result["results"]["gray"], result["results"]["model"]
    assert gray["colorfulness"] < 1 and gray["delta_cf"] == pytest.approx(gray["colorfulness_real"] - gray["colorfulness"])
    assert model.keys() == gray.keys() and np.isfinite(list(model.values())).all()
    rows = (out / "per_image.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 13 and (out / "samples.png").is_file()
    from colorgan.photos import find_photos, load_photos
    photos = load_photos(find_photos(photo_dir), 256)
    ab = rgb2lab(photos.pixels[photos.usable()])[..., 1:].reshape(-1, 2) / 110
    floor = np.abs(ab - np.median(ab, 0)).mean()  # the best single tint's L1: the originals' median a and b
    stated = float(result["protocol"].split("median a and b: ")[1].split()[0])
    assert stated == pytest.approx(floor, abs=5e-4)  # to the histogram's 0.1 CIELAB units
    assert gray["tint_gain"] == pytest.approx(1 - np.abs(ab).mean() / floor, abs=0.01) and gray["tint_gain"] < 0


def test_export_onnx_matches_torch(artefact, tmp_path):
    pytest.importorskip("onnxruntime")
    r = CliRunner().invoke(main, ["export", str(artefact), "--onnx", str(tmp_path / "g.onnx")])
    assert r.exit_code == 0, r.output
    assert "1x1x32x32" in r.output and "2x1x64x64" in r.output and (tmp_path / "g.onnx").is_file()


def test_false_color_and_lightness_drift_on_known_images():
    from colorgan.color import rgb_to_lab
    from colorgan.metrics import false_color, lightness_drift
    gray = torch.full((1, 3, 4, 4), 0.5)
    red = gray.clone()
    red[:, 0, :2] = 1.0  # the top half turns saturated red: chroma far above the gray original's
    assert false_color(rgb_to_lab(red), rgb_to_lab(gray)).item() == pytest.approx(0.5)
    assert false_color(rgb_to_lab(gray), rgb_to_lab(red)).item() == 0  # less colour than the original is not false
    assert false_color(rgb_to_lab(gray), rgb_to_lab(gray)).item() == 0
    lab = rgb_to_lab(gray)
    brighter = lab.clone()
    brighter[:, 0] += 3.0
    assert lightness_drift(brighter, lab).item() == pytest.approx(3.0, abs=1e-4)


def test_wrong_hue_on_known_images():
    "Clear colour of another hue counts; the same hue, a dull original or a dull prediction do not."
    from colorgan.color import rgb_to_lab
    from colorgan.metrics import false_color, wrong_hue
    gray = torch.full((1, 3, 4, 4), 0.5)
    green, red = gray.clone(), gray.clone()
    green[:, 1] = 0.8
    red[:, 0] = 0.9
    red_top = green.clone()
    red_top[:, :, :1] = red[:, :, :1]  # one row of four painted red on the green original
    lab = {name: rgb_to_lab(t) for name, t in {"gray": gray, "green": green, "red": red, "red_top": red_top}.items()}
    assert wrong_hue(lab["red_top"], lab["green"]).item() == pytest.approx(0.25)
    assert wrong_hue(lab["red"], lab["green"]).item() == 1.0
    assert false_color(lab["red"], lab["green"]).item() == 0  # as saturated as the original: false_color misses it
    assert wrong_hue(lab["green"], lab["green"]).item() == 0
    assert wrong_hue(lab["red"], lab["gray"]).item() == 0  # the original has no hue to miss (false_color's case)
    assert wrong_hue(lab["gray"], lab["green"]).item() == 0  # too little colour to be a wrong colour
    faint = lab["red"].clone()
    faint[:, 1:] *= 10 / torch.hypot(faint[:, 1], faint[:, 2]).clamp(min=1e-6)  # the red hue at chroma 10
    assert wrong_hue(faint, lab["green"]).item() == 0
    assert wrong_hue(faint, lab["green"], chroma=5).item() == 1.0


def test_training_and_inference_agree_on_a_training_size_photo(artefact, photo_dir):
    "A 32 px photo: what the training loader feeds the net and what Colorizer renders give the same chroma."
    from colorgan.artifacts import load_generator
    from colorgan.color import denorm_l, gamut_scale, norm_l, rgb_to_lab
    from colorgan.data import CachedPhotos, LabDataLoader
    img = Image.open(sorted(photo_dir.glob("*.jpg"))[0]).convert("RGB").resize((32, 32))
    net, _ = load_generator(artefact)
    (l, _), = [LabDataLoader(CachedPhotos(np.asarray(img)[None]), bs=1, device="cpu").one_batch()]
    with torch.no_grad():
        trained_ab = net(l) * 110
    out = Colorizer.from_artifact(artefact, device="cpu", engine="torch")(img)
    lab = rgb_to_lab(torch.from_numpy(np.asarray(out)).permute(2, 0, 1)[None].float() / 255)
    assert (norm_l(lab[:, :1]) - l).abs().max() < 0.02  # the same lightness in, 8-bit rounding aside
    inside = gamut_scale(torch.cat([denorm_l(l), trained_ab], 1)) == 1  # where no chroma had to go
    assert inside.float().mean() > 0.5
    assert (lab[:, 1:] - trained_ab).abs()[inside.expand(-1, 2, -1, -1)].mean() < 0.5  # the same chroma (CIELAB)


def test_sample_grids_name_their_columns_and_their_epoch():
    from colorgan.color import gray_rgb
    from colorgan.show import LINE, grid_image, sample_grid
    l, ab = torch.zeros(3, 1, 32, 32), torch.zeros(3, 2, 32, 32)
    plain = grid_image([gray_rgb(l)] * 3)
    grid = sample_grid(l, ab, ab, caption="epoch 7")
    assert grid.height == plain.height + 2 * LINE and grid.width == plain.width
    header = np.asarray(grid)[:2 * LINE]
    assert (header < 128).any(axis=-1).sum() > 40  # dark text drawn in the two title lines
    assert (np.asarray(grid)[2 * LINE:] == np.asarray(plain)).all()


@pytest.mark.parametrize("damage", ["truncated", "emptied", "folder", "bitflip", "swapped"])
def test_a_damaged_onnx_cache_is_rebuilt_not_trusted(artefact, astronaut, tmp_path, monkeypatch, damage):
    pytest.importorskip("onnxruntime")
    import shutil
    from colorgan.inference import cached_onnx
    monkeypatch.setenv("COLORGAN_CACHE", str(tmp_path / "cache"))
    path = cached_onnx(artefact)
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "emptied":
        path.write_bytes(b"")
    elif damage == "folder":
        path.unlink()
        path.mkdir()
    elif damage == "bitflip":
        flipped = bytearray(good)
        flipped[len(good) // 2] ^= 0xFF
        path.write_bytes(bytes(flipped))
    else:  # another model's graph under this model's name
        other = tmp_path / "other.pth"
        shutil.copy(artefact, other)
        with open(other, "ab") as f:
            f.write(b"\0")  # another file, another hash, the same weights: a graph that loads
        path.write_bytes(cached_onnx(other).read_bytes()[:-1] + b"\1")
    colour = Colorizer.from_artifact(artefact, device="cpu", engine="onnxruntime")(astronaut)
    reference = Colorizer.from_artifact(artefact, device="cpu", engine="torch")(astronaut)
    assert np.abs(np.asarray(colour, dtype=int) - np.asarray(reference, dtype=int)).max() <= 1
    assert path.is_file() and path.read_bytes() == good


def _hostile_lab(h=96, w=130, seed=0):
    "L from 0 to 100 and ab anywhere in the square the network can predict: most colours far outside sRGB."
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, h, w, generator=g) * 100, (torch.rand(1, 2, 24, 33, generator=g) * 2 - 1) * 110


@pytest.mark.parametrize("branch_free", [False, True])
def test_the_strips_give_the_exact_paths_colours(monkeypatch, branch_free):
    """`combine` (strips through `rgb8_and_redo`, bisection once a photo for the colours its Newton step leaves) =
    `lab_to_rgb8` of the whole photo (bisection in place): eager, and in the branch-free form torch.compile fuses
    (run uncompiled here, with torch.compile's maths)."""
    import colorgan.inference as inference
    from colorgan.color import _planes_rgb8_and_redo, lab_to_rgb8, rgb8_and_redo
    l, ab = _hostile_lab()
    lab = torch.cat([l, F.interpolate(ab, size=l.shape[-2:], mode="bilinear", align_corners=False)], 1)
    assert rgb8_and_redo(lab)[1].any()  # some colours take bisection's path
    exact = lab_to_rgb8(lab)[0].numpy()
    calls = []
    if branch_free:  # the strips with a colour outside go to what torch.compile compiles, run uncompiled
        monkeypatch.setattr(inference, "_compiled_strip",
                            lambda build: lambda *a: calls.append(1) or _planes_rgb8_and_redo(*a))
    strips = Colorizer(torch.nn.Identity(), device="cpu", fused=branch_free, strip_rows=7).combine(l, ab)
    assert len(calls) == (-(-l.shape[-2] // 7) if branch_free else 0)  # every strip has a colour outside
    differ = np.abs(exact.astype(int) - strips.astype(int))
    assert differ.max() <= 1 and (differ > 0).mean() < 1e-3  # float reassociation at a rounding edge, no more


def test_fused_auto_builds_only_after_enough_pixels_and_refuses_other_values(monkeypatch):
    import colorgan.inference as inference
    calls = []  # whether each photo asked for the fused loop to be built if this machine has none
    monkeypatch.setattr(inference, "_compiled_strip", lambda build: calls.append(build) or None)
    monkeypatch.setattr(inference, "FUSE_AFTER_PIXELS", 2 * 96 * 130)
    colorizer = Colorizer(torch.nn.Identity(), device="cpu")
    l, ab = _hostile_lab()
    for _ in range(3):  # the third photo passes the threshold
        colorizer.combine(l, ab)
    assert calls == [False, False, True]
    Colorizer(torch.nn.Identity(), device="cpu", fused=True).combine(l, ab)
    assert calls[-1] is True
    never = Colorizer(torch.nn.Identity(), device="cpu", fused=False)
    never._combined_pixels = 10**12
    never.combine(l, ab)
    on_gpu = Colorizer(torch.nn.Identity(), device="cpu")
    on_gpu.device, on_gpu._combined_pixels = torch.device("cuda"), 10**12  # auto: the fused loop is a CPU's
    assert on_gpu._fused_strip(1) is None
    assert len(calls) == 4
    with pytest.raises(ColorganError, match="fused"):
        Colorizer(torch.nn.Identity(), device="cpu", fused="yes")


def test_a_failed_build_falls_back_to_the_same_colours(monkeypatch, caplog, tmp_path):
    from colorgan import fused
    monkeypatch.setenv("COLORGAN_CACHE", str(tmp_path))

    def broken(*args, **kw):
        raise RuntimeError("no C++ compiler")
    monkeypatch.setattr(torch.export, "export", broken)
    monkeypatch.setattr(fused, "_LOADED", {})
    l, ab = _hostile_lab()
    out = Colorizer(torch.nn.Identity(), device="cpu", fused=True).combine(l, ab)
    assert "no C++ compiler" in caplog.text and not fused.package_path().exists()
    caplog.clear()
    assert fused.fused_loop(True) is None and not caplog.text  # not tried again in this process
    assert (out == Colorizer(torch.nn.Identity(), device="cpu", fused=False).combine(l, ab)).all()


def test_a_package_whose_stamp_does_not_match_or_that_does_not_load_is_not_used(monkeypatch, caplog, tmp_path):
    from colorgan import fused
    from colorgan.utils import sha256_of
    monkeypatch.setenv("COLORGAN_CACHE", str(tmp_path))
    monkeypatch.setattr(fused, "_LOADED", {})
    path = fused.package_path()
    path.parent.mkdir(parents=True)
    stamp = path.with_name(path.name + ".sha256")
    path.write_bytes(b"half a package")
    stamp.write_text("0" * 64)  # the hash of what was written before it was cut short
    assert fused.fused_loop(False) is None and not caplog.text  # not loaded, not built
    stamp.write_text(sha256_of(path))  # stamped, yet no package
    assert fused.fused_loop(False) is None and "not available" in caplog.text


@pytest.mark.slow
def test_the_compiled_recombination_gives_the_exact_paths_colours_and_later_processes_load_it(monkeypatch,
                                                                                                 tmp_path):
    "AOTInductor (a C++ loop) of the strip; 12-25 s to build on 2 cores here, then kept for other processes."
    import subprocess
    import sys

    from colorgan import fused as fusing
    monkeypatch.setenv("COLORGAN_CACHE", str(tmp_path))
    monkeypatch.setattr(fusing, "_LOADED", {})
    if fusing.fused_loop(True) is None:
        pytest.skip("the fused loop cannot be built here (no C++ compiler)")
    l, ab = _hostile_lab(300, 410, seed=1)
    fused = Colorizer(torch.nn.Identity(), device="cpu", fused=True)
    compiled = fused.combine(l, ab)
    exact = Colorizer(torch.nn.Identity(), device="cpu", fused=False).combine(l, ab)
    differ = np.abs(exact.astype(int) - compiled.astype(int))
    assert differ.max() <= 1 and (differ > 0).mean() < 1e-3
    from colorgan.color import lightness_of_gray8
    levels = np.arange(256, dtype=np.uint8).repeat(40).reshape(64, 160)
    back = fused.combine(lightness_of_gray8(levels), torch.zeros(1, 2, 4, 5))
    assert (back == levels[..., None]).all()  # a gray photo with no chroma comes back level for level
    later = "from colorgan.fused import fused_loop; import sys; sys.exit(fused_loop(False) is None)"
    assert subprocess.run([sys.executable, "-c", later], env=os.environ).returncode == 0  # loaded, not rebuilt


@pytest.mark.parametrize("head", ["ab", "classes"])
def test_inference_records_no_graph(head, astronaut):
    """predict_ab, predict_small and colorize run the generator under inference mode: autograd saves no tensor, the
    ab it returns is attached to no graph, and a class head keeps nothing of the call on itself."""
    from colorgan.models import build_generator, class_head
    net = build_generator(pretrained=False, width=0.25, img_size=32, head=head, out_stride=4 if head == "classes" else 1)
    colorizer = Colorizer(net, render_size=32, device="cpu")
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        l = colorizer.lightness(astronaut)
        ab = colorizer.predict_ab([l])[0]
        small = colorizer.predict_small([colorizer.render_l(l)])[0]
        colorizer(astronaut)
    assert saved == [] and not ab.requires_grad and ab.grad_fn is None and not small.requires_grad
    if head == "classes":
        assert not [k for k, v in vars(class_head(net)).items() if torch.is_tensor(v)]


def test_serve_keeps_no_graph_between_requests(artefact, astronaut):
    """Twenty requests through serve's torch engine: every generator output is an inference tensor (no graph), and
    the renders serve keeps for /render hold none either."""
    from fastapi.testclient import TestClient

    from colorgan.serve import create_app
    colorizer = Colorizer.from_artifact(artefact, device="cpu", engine="torch")
    outputs = []
    colorizer.model.register_forward_hook(lambda m, i, o: outputs.append((o.requires_grad, o.is_inference())))
    client = TestClient(create_app(colorizer))
    buf = io.BytesIO()
    astronaut.save(buf, format="PNG")
    for _ in range(20):
        assert client.post("/colorize", files={"image": ("a.png", buf.getvalue())}).status_code == 200
    assert len(outputs) == 20 and all(not grad and inference for grad, inference in outputs)


def test_a_package_others_may_write_is_not_loaded(monkeypatch, caplog, tmp_path):
    "Native code in a cache folder: a stamped package that others may replace is refused with a warning, unloaded."
    from colorgan import fused
    from colorgan.utils import write_stamp
    monkeypatch.setenv("COLORGAN_CACHE", str(tmp_path))
    monkeypatch.setattr(fused, "_LOADED", {})
    loads = []
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda p: loads.append(p) or (lambda *a: a))
    path = fused.package_path()
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_bytes(b"a package")
    write_stamp(path)
    path.chmod(0o666)
    assert fused.fused_loop(False) is None and loads == [] and "another user or others may write" in caplog.text
    monkeypatch.setattr(fused, "_LOADED", {})
    path.chmod(0o600)
    assert fused.fused_loop(False) is not None and len(loads) == 1  # the same package, this user's alone: loaded


def test_another_models_graph_with_its_own_stamp_is_not_used(tmp_path, monkeypatch, astronaut):
    """The ONNX cache's stamp names the artefact it was exported from: another model's graph, copied in with its
    stamp under this model's name, is exported again, and the colours are this model's."""
    pytest.importorskip("onnxruntime")
    import shutil

    from colorgan.artifacts import save_generator
    from colorgan.inference import cached_onnx
    from colorgan.models import build_generator
    monkeypatch.setenv("COLORGAN_CACHE", str(tmp_path / "cache"))
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(save_generator(build_generator(pretrained=False, width=0.25, img_size=32),
                                     tmp_path / f"g{seed}.pth"))
    mine, theirs = cached_onnx(models[0]), cached_onnx(models[1])
    good = mine.read_bytes()
    shutil.copy(theirs, mine)
    shutil.copy(theirs.with_name(theirs.name + ".sha256"), mine.with_name(mine.name + ".sha256"))
    colour = Colorizer.from_artifact(models[0], device="cpu", engine="onnxruntime")(astronaut)
    reference = Colorizer.from_artifact(models[0], device="cpu", engine="torch")(astronaut)
    assert np.abs(np.asarray(colour, dtype=int) - np.asarray(reference, dtype=int)).max() <= 1
    assert mine.read_bytes() == good


def test_a_stamped_graph_onnxruntime_cannot_load_is_exported_again(artefact, tmp_path, monkeypatch, astronaut,
                                                                   caplog):
    "INVALID_PROTOBUF (or a newer onnxruntime refusing an old graph) from a stamped cache: rebuilt, not fatal."
    pytest.importorskip("onnxruntime")
    from colorgan.inference import cached_onnx
    from colorgan.utils import sha256_of, write_stamp
    monkeypatch.setenv("COLORGAN_CACHE", str(tmp_path / "cache"))
    path = cached_onnx(artefact)
    path.write_bytes(b"not a protobuf at all")
    write_stamp(path, sha256_of(artefact))  # stamped: the damage is not the stamp's to see
    colour = Colorizer.from_artifact(artefact, device="cpu", engine="onnxruntime")(astronaut)
    assert colour.size == astronaut.size and "exporting it again" in caplog.text
    assert path.read_bytes() != b"not a protobuf at all"
