"""What a user sees on the command line when something is wrong: one message, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from multitune.cli import _parser, main

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


# Every numeric option of every verb, with a value just out of its range, and the range the message states.
OUT_OF_RANGE = [
    ("plan C", "--price", "-3", "it must be at least 0 (price of one GPU-hour, e.g. 2.5)"),
    ("plan C", "--mfu", "1.5", "it must be above 0 and at most 1 (the share of the GPU's peak FLOPs"),
    ("plan C", "--mfu", "0", "it must be above 0 and at most 1"),
    ("plan C", "--gpus", "0", "it must be at least 1"),
    ("plan C", "--gpu-memory", "-80", "it must be above 0 (GiB per GPU, e.g. 80)"),
    ("plan C", "--gpu-tflops", "0", "it must be above 0 (dense bf16 TFLOPS per GPU, e.g. 312)"),
    ("plan C", "--measure", "-1", "it must be at least 0 (training steps to run here)"),
    ("predict R --input a.csv --output b.jsonl", "--max-new-tokens", "0", "it must be at least 1 (tokens to generate)"),
    ("data preview C", "-n", "0", "it must be at least 1"),
    ("doctor", "--timeout", "-5", "it must be above 0"),
    ("chat R", "--max-new-tokens", "-1", "it must be at least 1"),
    ("chat R", "--temperature", "2.5", "it must be from 0 to 2 (0 decodes greedily)"),
    ("chat R", "--temperature", "-0.1", "it must be from 0 to 2"),
    ("chat R", "--top-p", "0", "it must be above 0 and at most 1"),
    ("chat R", "--top-p", "1.01", "it must be above 0 and at most 1"),
    ("chat R", "--seed", "-1", "it must be at least 0"),
    ("serve R", "--port", "65536", "it must be from 0 to 65535 (a TCP port; 0 picks a free one)"),
    ("serve R", "--port", "-1", "it must be from 0 to 65535"),
    ("serve R", "--max-tokens", "0", "it must be at least 1"),
    ("plan C", "--mfu", "nan", "it must be above 0 and at most 1"),
    ("plan C", "--price", "inf", "it must be at least 0"),
]


@pytest.mark.parametrize(("command", "option", "value", "range_"), OUT_OF_RANGE,
                         ids=[f"{c.split()[0]} {o} {v}" for c, o, v, _ in OUT_OF_RANGE])
def test_a_number_out_of_range_is_refused_while_parsing(command, option, value, range_, tmp_path, capsys):
    argv = [str(tmp_path / "x") if w in ("C", "R") else w for w in command.split()]
    with pytest.raises(SystemExit) as e:
        main([*argv, option, value])
    assert e.value.code == 2
    first, fix = capsys.readouterr().err.splitlines()  # two lines, no usage text, no traceback
    assert first.startswith(f"error: argument {option}: {value} is out of range: {range_}")
    assert fix == f"  fix: `multitune {' '.join(argv[:2] if argv[0] == 'data' else argv[:1])} --help` lists the options"
    assert not (tmp_path / "x").exists()  # refused before anything ran


@pytest.mark.parametrize(("option", "value", "problem"), [
    ("--gpus", "1.5", "'1.5' is not a whole number"), ("--price", "cheap", "'cheap' is not a number")])
def test_a_word_where_a_number_belongs_is_refused_while_parsing(option, value, problem, capsys):
    with pytest.raises(SystemExit):
        main(["plan", "c.yaml", option, value])
    assert capsys.readouterr().err.startswith(f"error: argument {option}: {problem}\n")


def test_the_edges_of_each_range_are_accepted():
    args = _parser().parse_args(["plan", "c.yaml", "--mfu", "1", "--price", "0", "--gpus", "1", "--measure", "0",
                                 "--gpu-memory", "0.5", "--gpu-tflops", "1e3"])
    assert (args.mfu, args.price, args.gpus, args.measure, args.gpu_memory, args.gpu_tflops) == (1.0, 0.0, 1, 0, 0.5, 1000.0)
    args = _parser().parse_args(["chat", "r", "--temperature", "0", "--top-p", "1", "--seed", "0",
                                 "--max-new-tokens", "1"])
    assert (args.temperature, args.top_p, args.seed, args.max_new_tokens) == (0.0, 1.0, 0, 1)
    assert _parser().parse_args(["serve", "r", "--port", "0"]).port == 0
    assert _parser().parse_args(["serve", "r"]).port == 8000  # defaults are not re-checked, and are in range


def test_the_real_command_line_refuses_a_negative_price_without_a_traceback():
    r = multitune("plan", "configs/quickstart.yaml", "--price", "-3")
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    assert r.stderr.splitlines()[0] == ("error: argument --price: -3 is out of range: it must be at least 0 "
                                        "(price of one GPU-hour, e.g. 2.5)")
