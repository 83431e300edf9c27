"""Never lose a run: SIGKILL at random moments and SIGTERM, then resume, must end bitwise equal to an
uninterrupted run, with the same metrics.jsonl rows (issue: exact resume)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import SMALL_TINY

CONFIG = {
    "model": {"name": "tiny", "tiny": SMALL_TINY},
    "adapter": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.1},  # dropout: the RNG state matters
    "tasks": [
        {"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 96},
        {"name": "quiz", "kind": "multiple_choice", "source": "demo:quiz", "max_rows": 64},
    ],
    # Packed: 128 training examples in rows of up to 128 tokens (one to three examples each), global
    # batch 8 rows, so 30 steps cross several epoch boundaries and the packing plan must resume exactly.
    "data": {"packing": True, "max_seq_len": 128},
    "train": {"max_steps": 30, "micro_batch_size": 4, "grad_accum_steps": 2, "learning_rate": 1.0e-3},
    # best_metric: a new best is checkpointed between the regular ones and kept by rotation.
    "eval": {"every_steps": 5, "max_rows": 8, "best_metric": "mean", "generate": "never"},
    "checkpoint": {"every_steps": 3, "keep_last": 2},
    "logging": {"every_steps": 2},  # log intervals straddle checkpoints: their sums must survive a kill
}


def write_config(tmp: Path, **sections) -> Path:
    cfg = {**CONFIG, **sections}
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(cfg: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "multitune", "train", str(cfg), f"output_dir={out}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def last_train_step(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return -1
    steps = [json.loads(x)["step"] for x in path.read_text().splitlines(keepends=True)
             if x.endswith("\n") and "train/loss" in x]
    return max(steps, default=-1)


def wait_until_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = 300) -> bool:
    """True once the run has logged `step`; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if last_train_step(out) >= step:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise TimeoutError(f"step {step} not reached")


def comparable_rows(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # wall-clock differs


def assert_same_run(out: Path, ref: Path) -> None:
    got = load_file(out / "adapter" / "adapter_model.safetensors")
    want = load_file(ref / "adapter" / "adapter_model.safetensors")
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k  # bitwise
    assert comparable_rows(out) == comparable_rows(ref)


def checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("reference")
    proc = launch(write_config(tmp), tmp / "run")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    return tmp / "run"


def test_sigkill_at_random_steps_then_resume_gives_the_same_run(reference, tmp_path):
    cfg, out = write_config(tmp_path), tmp_path / "run"
    kill_at = sorted(random.Random(5).sample(range(2, 29), 3))
    kills = 0
    for step in kill_at:
        proc = launch(cfg, out)
        if wait_until_step(proc, out, step):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            proc.wait()
    proc = launch(cfg, out)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    assert kills == 3 and "resumed from" in output
    assert_same_run(out, reference)
    steps = checkpoint_steps(out)
    assert steps == checkpoint_steps(reference) and steps[-2:] == [27, 30]  # keep_last: 2, and the best
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_sigterm_saves_a_checkpoint_exits_75_and_the_run_resumes(reference, tmp_path):
    cfg, out = write_config(tmp_path), tmp_path / "run"
    proc = launch(cfg, out)
    assert wait_until_step(proc, out, 7)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, output
    assert "stopped by SIGTERM" in output and "Run the same command again" in output
    stopped_at = max(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))
    assert 7 <= stopped_at < 30
    proc = launch(cfg, out)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    assert f"(step {stopped_at})" in output
    assert_same_run(out, reference)


def test_tokens_in_the_environment_are_written_nowhere(tmp_path):
    pytest.importorskip("wandb")
    secrets = {"HF_TOKEN": "hf_SeCrEt0123456789abcdef", "WANDB_API_KEY": "wandbSeCrEt0123456789abcdef0123456789ab"}
    cfg = write_config(tmp_path, train={**CONFIG["train"], "max_steps": 4},
                       logging={"every_steps": 2, "wandb": {"mode": "offline"}})
    out = tmp_path / "run"
    env = {**os.environ, **secrets, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, "-m", "multitune", "train", str(cfg), f"output_dir={out}"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any("wandb" in str(p) for p in files) and any(p.name == "trainable.safetensors" for p in files)
    for p in files:
        data = p.read_bytes()
        for value in secrets.values():
            assert value.encode() not in data, p
    assert not any(v in proc.stdout + proc.stderr for v in secrets.values())


def test_a_second_sigint_aborts_at_once_and_leaves_complete_checkpoints(reference, tmp_path):
    cfg, out = write_config(tmp_path), tmp_path / "run"
    proc = launch(cfg, out)
    assert wait_until_step(proc, out, 8)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode in (130, 75), output  # 75 only if the first one's checkpoint won the race
    if proc.returncode == 130:
        assert "aborted" in output and "Traceback" not in output
    proc = launch(cfg, out)  # whatever the abort interrupted, the run resumes from a complete checkpoint
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    assert_same_run(out, reference)
