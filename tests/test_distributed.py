"Two CPU processes with the gloo backend under torchrun and accelerate launch: both stages for real, as GPUs would."
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


LAUNCHERS = {
    "torchrun": ["torchrun", "--standalone", "--nproc_per_node", "2"],
    "accelerate": ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "bf16", "--dynamo_backend", "no"],  # the recipe's fp32 must win

}


def _tool(name):
    return shutil.which(name) or str(Path(sys.executable).parent / name)


@pytest.mark.slow
@pytest.mark.parametrize("launcher, mode", [("torchrun", "plain"), ("accelerate", "plain"), ("torchrun", "resume")])
def test_two_gloo_ranks_train_both_stages_identically(photo_dir, tmp_path, launcher, mode):
    "resume: one epoch, then both ranks --resume to the second from the resolved recipe's device (a type, no index)."
    command = LAUNCHERS[launcher]
    if not Path(_tool(command[0])).exists():
        pytest.skip(f"{command[0]} is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([_tool(command[0]), *command[1:], str(HERE / "distributed_worker.py"), str(photo_dir),
                        str(tmp_path), mode], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    for name in ("generator", "critic"):
        digests = {(tmp_path / f"{name}.rank{k}.sha256").read_text() for k in (0, 1)}
        assert len(digests) == 1, f"the ranks' {name} weights differ"
    for stage in ("g", "gan"):
        run = tmp_path / stage
        assert (run / "generator.pth").is_file() and len(list(run.glob("*.tmp"))) == 0
        with open(run / "history.csv") as f:
            rows = list(csv.DictReader(f))
        assert [row["epoch"] for row in rows] == ["0", "1"]  # written once, by rank 0
        assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    for k in (0, 1):  # precision = "fp32": no autocast from the launcher either
        assert (tmp_path / f"dtypes.rank{k}.txt").read_text() == "torch.float32"
    # metrics are reduced across ranks: both ranks saw the same numbers
    assert (tmp_path / "history.rank0.txt").read_text() == (tmp_path / "history.rank1.txt").read_text()


@pytest.mark.slow
def test_minutes_under_torchrun_give_every_rank_one_plan(photo_dir, tmp_path):
    """--minutes with bf16 on two gloo ranks: every rank times its steps (validation and DDP are collectives),
    rank 0's plan is everyone's, and each stage trains for its budget (each rank steps through half the loader's
    batches: a plan that forgot it trained a quarter to a half of the time), not past it."""
    if not Path(_tool("torchrun")).exists():
        pytest.skip("torchrun is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([_tool("torchrun"), *LAUNCHERS["torchrun"][1:], str(HERE / "distributed_worker.py"),
                        str(photo_dir), str(tmp_path), "budget"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    for stage in ("g", "gan"):
        plans = {(tmp_path / f"plan.{stage}.rank{k}.txt").read_text() for k in (0, 1)}
        assert len(plans) == 1, plans
        assert (tmp_path / stage / "generator.pth").is_file()
        recorded = (tmp_path / stage / "recipe.resolved.toml").read_text()
        assert 'device = "cpu"' in recorded  # a device type, never one rank's index
        took = float((tmp_path / f"seconds.{stage}.rank0.txt").read_text())
        assert 0.6 * 18 <= took <= 18 * 1.1 + 5, took  # 0.3 minutes; the launch and loading photos count too
