"The examples keep working: each runs end to end at a tiny size."
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.mark.slow  # the example end to end in a subprocess (full-width ResNet18), 16 s
def test_python_api_example(tmp_path):
    r = subprocess.run([sys.executable, str(EXAMPLES / "python_api.py"), "--size", "32", "--epochs", "1",
                        "--out", str(tmp_path / "run")], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ["lr_find.png", "show_results.png", "stage_one.pkl"]:
        assert (tmp_path / "run" / name).is_file(), name
