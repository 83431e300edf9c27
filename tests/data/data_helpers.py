"""Helpers for the data tests: task configs from a few keys, files written on the fly, the shared real data.

A plain module, not a `conftest.py`: a second `conftest` module would shadow the root one that other
tests import constants from (`from conftest import SMALL_TINY`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

# tests/conftest.py's SHARED_DATA, computed the same way.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def task(**keys: Any) -> Any:
    """One validated task config; `name` defaults to "t"."""
    from multitune.config import validate

    return validate({"tasks": [{"name": "t", **keys}]}).tasks[0]


def run_config(tasks: list[dict[str, Any]], **sections: Any) -> Any:
    from multitune.config import validate

    return validate({"tasks": tasks, **sections})


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def shared_data() -> Path:
    """`../shared/data`, the real datasets; skips the calling test where they are absent (a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (present in CI and on the team's machines)")
    return SHARED_DATA


def step_gradients(model: Any, micro_batches: list[dict[str, Any]], n_tasks: int) -> tuple[dict[str, Any], Any, Any]:
    """One step's gradients (by parameter name), [answer tokens, real tokens] and per-task [loss sum, answer
    tokens] from the training loop's `accumulate_gradients`, on the CPU, from zeroed gradients."""
    from accelerate import Accelerator

    from multitune.train.loop import accumulate_gradients

    model.zero_grad(set_to_none=True)
    counts, sums = accumulate_gradients(model, Accelerator(cpu=True), micro_batches, n_tasks=n_tasks)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, counts, sums
