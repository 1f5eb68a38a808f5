"The benchmark scripts run at a tiny size on CPU (their numbers are read by people, never asserted on)."
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"


@pytest.mark.slow  # a whole benchmark in subprocesses, 25 s
def test_train_throughput_runs_tiny_and_prints_its_table():
    r = subprocess.run([sys.executable, "train_throughput.py", "--tiny"], cwd=BENCH, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [l for l in r.stdout.splitlines() if l.startswith("| stage ")]
    assert len(lines) == 7 and "seed, 2 workers, fp32" in r.stdout and "MFU" in r.stdout


def _time_to_quality():
    "benchmarks/time_to_quality.py as a module (benchmarks/ is not a package)."
    import importlib.util
    spec = importlib.util.spec_from_file_location("time_to_quality", BENCH / "time_to_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_run(folder, budget, stage_two_psnr, **more):
    import json
    folder.mkdir()
    system = {"psnr": 23.0, "ssim": 0.95, "ciede2000": 11.0, "colorfulness": 15.0, "delta_cf": 17.0,
              "false_color": 0.001, "lightness_drift": 0.1, **more}
    results = {"gray": dict(system, psnr=22.7), "stage one": system, "stage two": dict(system, psnr=stage_two_psnr)}
    (folder / "gan_quality.json").write_text(json.dumps({
        "budget": budget, "minutes": {"stage one": 4.5, "stage two": 4.5},
        "results": results}))
    return str(folder)


def test_time_to_quality_orders_runs_by_budget_and_plots_each_system(tmp_path):
    import numpy as np
    from PIL import Image
    ttq = _time_to_quality()
    runs = [_fake_run(tmp_path / "long", [45, 45], 24.0, wrong_hue=0.0125, tint_gain=0.031),
            _fake_run(tmp_path / "short", [5, 5], 23.2)]  # from before wrong_hue was measured
    rows = ttq.gather(runs)
    assert [r["budget"] for r in rows] == [10, 90]
    lines = ttq.table(rows).splitlines()
    assert len(lines) == 2 + 6 and lines[2].startswith("| 10 | gray |") and lines[-1].startswith("| 90 | stage two | 4.5 |")
    assert lines[-1].endswith("| 0.10% | 1.25% | 0.10 | 3.10% |") and lines[2].endswith("| 0.10% | - | 0.10 | - |")
    ttq.plot(rows, tmp_path / "plot.png")
    pixels = np.asarray(Image.open(tmp_path / "plot.png").convert("RGB")).reshape(-1, 3)
    for colour in ttq.SYSTEMS.values():  # each system's line is drawn
        assert (pixels == colour).all(1).sum() > 50
    with pytest.raises(SystemExit, match="was not run with --minutes"):
        ttq.gather([_fake_run(tmp_path / "epochs", [None, None], 23.0)])


def test_contact_sheet_colorizes_every_photo_of_a_folder(photo_dir, artefact, tmp_path):
    import numpy as np
    from PIL import Image
    n = _time_to_quality().contact_sheet(str(photo_dir), str(artefact), tmp_path / "sheet.png", cell=40, columns=5)
    sheet = np.asarray(Image.open(tmp_path / "sheet.png").convert("RGB"))
    assert n == 12 and sheet.shape == (3 * 42 - 2, 5 * 42 - 2, 3)
    cells = [sheet[r * 42:r * 42 + 40, c * 42:c * 42 + 40] for r in range(3) for c in range(5)]
    assert [bool((cell < 240).mean() > 0.2) for cell in cells] == [True] * 12 + [False] * 3  # 12 photos, 3 empty


def test_colour_by_region_names_each_region_and_the_wrong_pixels(photo_dir, artefact, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("colour_by_region", BENCH / "colour_by_region.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(photo_dir), str(artefact), str(artefact)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].count(": a, b") == 4 and out[2].startswith("| real photos |") and len(out) == 5 + 1 + 1 + 2
    assert "hue within 60 degrees of" in out[-1] and out[-1].endswith("'s 100%, of the real photo's 0%")
    import torch
    real = torch.tensor([50.0, -30.0, 30.0]).view(1, 3, 1, 1).repeat(1, 1, 2, 2)  # green (hue 135)
    real[..., 0, 0] = torch.tensor([50.0, 0.0, -30.0])  # one blue pixel (hue 270)
    pred = torch.tensor([50.0, 10.0, 20.0]).view(1, 3, 1, 1).repeat(1, 1, 2, 2)
    means = module.region_means(pred, real)
    assert means["green"] == pytest.approx((10, 20, -30, 30)) and means["blue"] == pytest.approx((10, 20, 0, -30))


@pytest.mark.slow
def test_video_benchmark_prints_frames_per_second_and_flicker(artefact):
    pytest.importorskip("av")
    r = subprocess.run([sys.executable, str(BENCH / "video.py"), str(artefact), "--frames", "4", "--engine", "torch"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| 480p") or line.startswith("| 1080p")]
    assert len(rows) == 4 and all(float(row.split("|")[3]) > 0 for row in rows)


@pytest.mark.slow
def test_imagenet_features_prints_its_probe(photo_dir):
    r = subprocess.run([sys.executable, str(BENCH / "imagenet_features.py"), str(photo_dir), "--probe-photos", "8",
                        "--probe-sizes", "64", "96"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for size in (64, 96):
        probes = [line for line in r.stdout.splitlines() if line.startswith(f"| probe, lite0, {size} px:")]
        assert len(probes) == 3 and all(line.rstrip(" |").endswith("%") for line in probes)
