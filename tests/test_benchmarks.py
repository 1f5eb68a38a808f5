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
