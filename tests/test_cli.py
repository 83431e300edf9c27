"""What a user sees on the command line when something is wrong: one message, no traceback."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def multitune(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "multitune", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_misspelt_key_exits_non_zero_with_a_suggestion():
    r = multitune("train", "configs/quickstart.yaml", "train.learning_rat=1e-4")
    assert r.returncode == 2
    assert "train.learning_rat" in r.stderr and "did you mean 'learning_rate'" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_missing_config_file_exits_non_zero_with_a_message(tmp_path):
    r = multitune("train", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2
    assert "config file not found" in r.stderr and "Traceback" not in r.stderr


def test_predict_on_a_folder_that_is_not_a_run(tmp_path):
    r = multitune("predict", str(tmp_path), "--input", "x.csv", "--output", "y.jsonl")
    assert r.returncode == 2 and "is not a finished run" in r.stderr and "Traceback" not in r.stderr
