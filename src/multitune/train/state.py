"""Everything about a run's progress that a checkpoint must carry to resume it exactly.

The data position needs no field of its own: the batches of step N are a pure function of (seed, N)
(see `data/mixture.py`), so `step` is the data position, the epoch and the position within it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class TrainState:
    step: int = 0
    """Optimizer steps completed (skipped non-finite steps included: their batches were consumed)."""
    tokens_seen: int = 0
    """Non-padding tokens trained on, all processes."""
    bad_steps: int = 0
    """Steps skipped because the loss or the gradient norm was not finite."""
    consecutive_bad_steps: int = 0
    best: dict[str, Any] | None = None
    """The best evaluation so far by `eval.best_metric` (`eval.best.update_best`); its step's checkpoint
    is kept by rotation."""
    baseline: dict[str, dict[str, float]] | None = None
    """Metrics of the untrained model, kept to show before/after when a resumed run ends."""
    shots: dict[str, dict[str, float]] | None = None
    """Metrics of the untrained model prompted with `eval.baseline_shots` training examples."""
    tracker_run_id: str | None = None
    metrics_rows: int = 0
    """Rows of metrics.jsonl written when the checkpoint was taken: a resumed run keeps exactly these."""
    last_eval_step: int | None = None
    """The step of the last logged evaluation, so a run resumed at its end does not log it twice."""
    train_seconds: float = 0.0
    """Time spent in optimizer steps, every session of the run (what tokens/s is computed over)."""
    wall_seconds: float = 0.0
    """The run's time from setup to its last checkpoint or output, every session added (work lost to a kill
    after the last checkpoint is not counted: it is done again)."""
    peak_memory_bytes: float = 0.0
    """The largest peak memory of any session (`runtime.peak_memory`)."""
    # Sums since the last log line, so a resumed run logs the same rows as an uninterrupted one.
    interval_task_sums: list[list[float]] = field(default_factory=list)
    interval_tokens: int = 0
    interval_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**d)

    def reset_interval(self, n_tasks: int) -> None:
        self.interval_task_sums = [[0.0, 0.0] for _ in range(n_tasks)]
        self.interval_tokens = 0
        self.interval_steps = 0


@dataclass
class StepResult:
    loss: float  # mean loss per answer token over the whole step (all micro-batches, all processes)
    grad_norm: float
    answer_tokens: int  # on all processes
    tokens: int  # non-padding tokens on all processes
    task_sums: torch.Tensor  # (n_tasks, 2): summed loss and answer tokens per task, all processes
    overflow: bool = False
    """fp16 loss scaling: the gradients overflowed at the current scale, so the scaler skipped this update
    and lowered the scale. Normal while the scale settles; not a bad step."""

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)

    @property
    def bad(self) -> bool:
        """Skipped for a non-finite loss or gradient that loss scaling does not explain."""
        return not self.finite and not self.overflow


def record(state: TrainState, result: StepResult) -> None:
    """Advance the state by one step. A bad step (non-finite, `StepResult.bad`) counts as bad and adds
    nothing to the loss sums; a loss scaler's overflow adds its (finite) loss like any other step."""
    state.step += 1
    state.tokens_seen += result.tokens
    if result.bad:
        state.bad_steps += 1
        state.consecutive_bad_steps += 1
        return
    state.consecutive_bad_steps = 0
    for sums, (loss, n) in zip(state.interval_task_sums, result.task_sums.tolist(), strict=True):
        sums[0] += loss
        sums[1] += n
    state.interval_tokens += result.tokens
    state.interval_steps += 1


def interval_row(state: TrainState, task_names: Sequence[str], started: float) -> dict[str, float]:
    """The metrics.jsonl row for the steps since the last log line (losses are per answer token)."""
    loss = sum(s[0] for s in state.interval_task_sums)
    n = sum(s[1] for s in state.interval_task_sums)
    row = {"train/loss": loss / n if n else float("nan")}
    for name, (task_loss, task_n) in zip(task_names, state.interval_task_sums, strict=True):
        if task_n:
            row[f"train/{name}/loss"] = task_loss / task_n
    # Wall-clock throughput: the one field of a row that a resumed run cannot reproduce.
    row["tokens_per_s"] = state.interval_tokens / max(time.perf_counter() - started, 1e-9)
    return row
