"""Several processes on CPUs (gloo): DDP gives the same run as one process with the same global batch;
FSDP2-sharded parameters are saved whole; `multitune doctor` checks the process group."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import SMALL_TINY

HERE = Path(__file__).resolve().parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def write(tmp: Path, name: str, **train) -> Path:
    cfg = {
        "model": {"name": "tiny", "tiny": SMALL_TINY},
        "adapter": {"dropout": 0.0},  # dropout draws different random numbers per process
        "tasks": [{"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 96},
                  {"name": "quiz", "kind": "multiple_choice", "source": "demo:quiz", "max_rows": 41}],
        "train": {"max_steps": 6, "micro_batch_size": 4, "learning_rate": 2e-3, **train},
        "eval": {"max_rows": 9},  # an odd number of rows: shards of 5 and 4
        "checkpoint": {"every_steps": 3},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**cfg, "output_dir": str(tmp / name)}))
    return path


def test_two_ddp_processes_train_the_same_adapter_as_one_process(tmp_path):
    one = write(tmp_path, "one", grad_accum_steps=4)  # global batch 4 x 4 x 1 = 16
    two = write(tmp_path, "two", grad_accum_steps=2)  # global batch 4 x 2 x 2 = 16
    r1 = subprocess.run([sys.executable, "-m", "multitune", "train", str(one)], capture_output=True, text=True,
                        env=env(), timeout=900)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = subprocess.run([*TORCHRUN, "--master_port", str(free_port()), "-m", "multitune", "train", str(two)],
                        capture_output=True, text=True, env=env(), timeout=900)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5, msg=k)
    m1 = json.loads((tmp_path / "one" / "eval" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "eval" / "metrics.json").read_text())
    for phase in ("before", "after"):
        for task in ("claims", "quiz"):
            assert m2[phase][task]["rows"] == m1[phase][task]["rows"]
            assert m2[phase][task]["accuracy"] == m1[phase][task]["accuracy"]
            assert m2[phase][task]["loss"] == pytest.approx(m1[phase][task]["loss"], rel=1e-4)
    assert m1["after"]["claims"]["rows"] == 9
    # Each process wrote its own random state; only the main process wrote the rest.
    ckpt = tmp_path / "two" / "checkpoints" / "step-6"
    assert sorted(p.name for p in ckpt.glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"]
    assert r2.stdout.count("adapter: ") == 1  # rank-zero discipline: one summary


def test_fsdp2_sharded_parameters_are_checkpointed_and_saved_whole(tmp_path, tiny_dir):
    r = subprocess.run([*TORCHRUN, "--master_port", str(free_port()), str(HERE / "fsdp_harness.py"),
                        str(tiny_dir), str(tmp_path / "out")], capture_output=True, text=True, env=env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0: ok" in r.stdout and "rank 1: ok" in r.stdout
    adapter = load_file(tmp_path / "out" / "adapter" / "adapter_model.safetensors")
    hidden = SMALL_TINY["hidden_size"]
    q_a = next(v for k, v in adapter.items() if "q_proj.lora_A" in k)
    q_b = next(v for k, v in adapter.items() if "q_proj.lora_B" in k)
    assert tuple(q_a.shape) == (4, hidden) and tuple(q_b.shape) == (hidden, 4)  # not the 1/2 shards


def test_doctor_all_reduces_across_processes_and_times_out_with_a_message():
    r = subprocess.run([*TORCHRUN, "--master_port", str(free_port()), "-m", "multitune", "doctor", "--timeout", "60"],
                       capture_output=True, text=True, env=env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ok: rank 0/2" in r.stdout and "ok: rank 1/2" in r.stdout and "torch " in r.stdout
    alone = {**env(), "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(free_port())}
    r = subprocess.run([sys.executable, "-m", "multitune", "doctor", "--timeout", "3"], capture_output=True,
                       text=True, env=alone, timeout=120)
    assert r.returncode == 1
    assert "rank 0/2: could not complete an all-reduce" in r.stdout and "MASTER_ADDR" in r.stdout
