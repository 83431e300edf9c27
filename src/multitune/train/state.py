"""Everything about a run's progress that a checkpoint must carry to resume it exactly.

The data position needs no field of its own: the batches of step N are a pure function of (seed, N)
(see `data/mixture.py`), so `step` is the data position, the epoch and the position within it.

Exact resume depends on every change to the state, so they are all here: the recipe changes a
`TrainState` only through its methods (`record_step`, `start_interval`, `close_interval`,
`record_baseline`, `record_eval`, `attach_tracker`, `mark_checkpoint`, `account`), never by assigning
a field, and this file lists every mutation.
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
    eval_seconds: float = 0.0
    """Time spent evaluating (the baselines, periodic and final evaluations), every session of the run."""
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

    def record_step(self, result: StepResult, seconds: float) -> None:
        """Advance by one optimizer step that took `seconds`. A bad step (non-finite, `StepResult.bad`)
        counts as bad and adds nothing to the loss sums; a loss scaler's overflow adds its (finite) loss
        like any other step. The interval must have been started (`start_interval`)."""
        self.step += 1
        self.tokens_seen += result.tokens
        self.train_seconds += seconds
        if result.bad:
            self.bad_steps += 1
            self.consecutive_bad_steps += 1
            return
        self.consecutive_bad_steps = 0
        for sums, (loss, n) in zip(self.interval_task_sums, result.task_sums.tolist(), strict=True):
            sums[0] += loss
            sums[1] += n
        self.interval_tokens += result.tokens
        self.interval_steps += 1

    def start_interval(self, n_tasks: int) -> None:
        """Zero sums for a new run's first log interval; a resumed run keeps the interval its checkpoint
        was taken in, so it logs the same rows as an uninterrupted one."""
        if not self.interval_task_sums:
            self._zero_interval(n_tasks)

    def close_interval(self, task_names: Sequence[str], started: float) -> dict[str, float]:
        """The metrics.jsonl row for the steps since the last log line (losses are per answer token;
        `started` is the interval's `time.perf_counter()`), and zero sums for the next interval."""
        loss = sum(s[0] for s in self.interval_task_sums)
        n = sum(s[1] for s in self.interval_task_sums)
        row = {"train/loss": loss / n if n else float("nan")}
        for name, (task_loss, task_n) in zip(task_names, self.interval_task_sums, strict=True):
            if task_n:
                row[f"train/{name}/loss"] = task_loss / task_n
        # Wall-clock throughput: the one field of a row that a resumed run cannot reproduce.
        row["tokens_per_s"] = self.interval_tokens / max(time.perf_counter() - started, 1e-9)
        self._zero_interval(len(task_names))
        return row

    def record_baseline(self, baseline: dict[str, dict[str, float]],
                        shots: dict[str, dict[str, float]] | None) -> None:
        """The untrained model's metrics, zero-shot and (`eval.baseline_shots`) k-shot."""
        self.baseline = baseline
        self.shots = shots

    def record_eval_time(self, seconds: float) -> None:
        """An evaluation (logged or not) took `seconds`."""
        self.eval_seconds += seconds

    def record_eval(self, step: int, best: dict[str, Any] | None) -> None:
        """An evaluation of `step` was logged; `best` is the best so far (`best.update_best`'s answer)."""
        self.best = best
        self.last_eval_step = step

    def attach_tracker(self, run_id: str | None) -> None:
        """The tracker run (wandb's id) that a resumed run continues."""
        self.tracker_run_id = run_id

    def mark_checkpoint(self, metrics_rows: int) -> None:
        """A checkpoint of this state is about to be written, after `metrics_rows` rows of metrics.jsonl."""
        self.metrics_rows = metrics_rows

    def account(self, wall_seconds: float, peak_memory_bytes: float) -> None:
        """Bring the run's wall time (every session, up to now) and its peak memory up to date; the peak
        is the largest of any session's."""
        self.wall_seconds = wall_seconds
        self.peak_memory_bytes = max(self.peak_memory_bytes, peak_memory_bytes)

    def _zero_interval(self, n_tasks: int) -> None:
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

