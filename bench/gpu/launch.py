"""The launched runs of bench/gpu/check.py: `multitune train` exactly as a user types it under
`accelerate launch` with a shipped topology cut to one process (single-gpu.yaml, on a CPU with use_cpu;
fsdp-1x4.yaml; fsdp-qlora-1x4.yaml), through a few steps, a checkpoint, a resume and the final adapter.

For each topology: run A trains `max_steps` steps uninterrupted, checkpointing every `every` steps and
logging every step; run B starts in a new folder from A's first checkpoint (`checkpoint.resume=<path>`)
and must log the same losses as A for the steps after it. Then every tensor of B's adapter must have
its full shape (under FSDP a process holds 1/N of each; the saved adapter must hold all of it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import REPO, child_env
from bench.gpu.data import task_configs
from bench.gpu.shapes import SKIP_CUDA, Shape

# The shipped topologies, cut to the one GPU the check runs on, and the run-config overrides each needs
# (fsdp-qlora-1x4.yaml's own header says which).
TOPOLOGIES = {
    "single": ("configs/accelerate/single-gpu.yaml", []),
    "fsdp": ("configs/accelerate/fsdp-1x4.yaml", []),
    "fsdp_qlora": ("configs/accelerate/fsdp-qlora-1x4.yaml",
                   ["adapter.method=qlora", "quantization.storage_dtype=bfloat16",
                    "quantization.compute_dtype=bfloat16", "model.dtype=bfloat16",
                    "train.gradient_checkpointing=true"]),
}


def run_config(shape: Shape, folder: str, data_dir: Path, max_steps: int, every: int) -> dict[str, Any]:
    """The run a user would write: precision and weight dtype left to the shipped `auto` (the run resolves
    them for the device and records them in its config.yaml); the topology's own overrides come on top."""
    return {
        "model": {"name": folder},
        "adapter": {"method": "lora", "r": shape.lora_r, "alpha": shape.lora_alpha},
        "tasks": task_configs(data_dir, 200),
        "data": {"max_seq_len": shape.pack_len, "packing": True},
        "train": {"max_steps": max_steps, "micro_batch_size": 1, "grad_accum_steps": 2,
                  "learning_rate": shape.learning_rate},
        "eval": {"baseline": False, "generate": "never", "max_rows": 4, "micro_batch_size": 4},
        "checkpoint": {"every_steps": every, "keep_last": None},
        "logging": {"every_steps": 1},
    }


def command(topology: str, work: Path) -> list[str]:
    """`accelerate launch --config_file <the topology at 1 process> -m multitune train`."""
    config, _ = TOPOLOGIES[topology]
    cut = yaml.safe_load((REPO / config).read_text())
    cut["num_processes"] = 1
    if not _cuda():  # single-gpu.yaml on a machine without one: the same launch on the CPU
        cut["use_cpu"] = True
        cut.pop("gpu_ids", None)
    path = work / f"accelerate-{topology}.yaml"
    path.write_text(yaml.safe_dump(cut))
    # Each topology its own rendezvous port: the two launches run side by side on the one GPU.
    port = str(29500 + 10 + list(TOPOLOGIES).index(topology))
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path), "--main_process_port", port,
            "-m", "multitune", "train"]


def check_topology(topology: str, shape: Shape, layers: int, folder: str, data_dir: Path, work: Path,
                   max_steps: int = 4, every: int = 2) -> dict[str, Any]:
    """Run A, run B resumed from A's step-`every` checkpoint, compare; see the module docstring."""
    if topology != "single" and not _cuda():
        return {"status": SKIP_CUDA + " (accelerate runs FSDP only on GPUs)"}
    work = work / topology
    work.mkdir(parents=True, exist_ok=True)
    config = work / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(shape, folder, data_dir, max_steps, every)))
    base = [*command(topology, work), str(config), *TOPOLOGIES[topology][1]]
    started = time.perf_counter()
    a, b = work / "uninterrupted", work / "resumed"
    log_a = _run([*base, f"output_dir={a}"], work / "uninterrupted.log")
    checkpoint = a / "checkpoints" / f"step-{every}"
    log_b = _run([*base, f"output_dir={b}", f"checkpoint.resume={checkpoint}"], work / "resumed.log")
    losses_a, losses_b = train_losses(a), train_losses(b)
    resumed_steps = sorted(losses_b)
    same = [losses_a.get(s) == losses_b[s] for s in resumed_steps]
    close = [abs(losses_a.get(s, float("inf")) - losses_b[s]) <= 1e-3 * max(1.0, abs(losses_b[s])) for s in resumed_steps]
    return {
        "command": " ".join(Path(x).name if x == sys.executable else x for x in base),
        "wall_s": round(time.perf_counter() - started, 1),
        "checkpoint": checkpoint.name if checkpoint.is_dir() else f"missing: {checkpoint}",
        "losses_uninterrupted": losses_a, "losses_resumed": losses_b,
        "resumed_steps": resumed_steps, "same_loss_exactly": bool(same) and all(same),
        "same_loss_within_1e-3": bool(close) and all(close),
        "adapter": adapter_shapes(b / "adapter", shape, layers),
        "logs_tail": {"uninterrupted": log_a, "resumed": log_b},
    }


def _run(cmd: list[str], log: Path) -> str:
    """Run one launch with the worktree's sources first on the path; raise with the log's end on failure."""
    env = child_env(PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    with log.open("w") as f:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{tail}")
    return tail


def train_losses(out: Path) -> dict[int, float]:
    """{step: train/loss} from a run's metrics.jsonl."""
    path = out / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def expected_shapes(shape: Shape, layers: int) -> dict[str, tuple[int, int]]:
    """{module suffix: (out, in)} of every LoRA target in one decoder layer."""
    head_dim = shape.hidden // shape.heads
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_heads * head_dim
    return {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, h), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}


def adapter_shapes(folder: Path, shape: Shape, layers: int) -> dict[str, Any]:
    """Every LoRA tensor of the saved adapter against its full shape: A is (r, in), B is (out, r)."""
    from safetensors import safe_open

    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        return {"status": f"missing: {path}"}
    with safe_open(str(path), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    wrong = []
    for key, got in shapes.items():
        layer_module = next((m for m in expected_shapes(shape, layers) if f".{m}.lora_" in key), None)
        if layer_module is None:
            wrong.append(f"{key}: unexpected tensor")
            continue
        out_f, in_f = expected_shapes(shape, layers)[layer_module]
        want = (shape.lora_r, in_f) if ".lora_A." in key else (out_f, shape.lora_r)
        if got != want:
            wrong.append(f"{key}: {got}, want {want}")
    want_count = 2 * len(expected_shapes(shape, layers)) * layers
    return {"tensors": len(shapes), "expected_tensors": want_count, "wrong": wrong,
            "all_full_shape": not wrong and len(shapes) == want_count,
            "example": {k: list(v) for k, v in list(shapes.items())[:2]}}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
