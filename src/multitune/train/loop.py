"""The training loop: one loop for CPU, one GPU, DDP and FSDP; the topology comes from accelerate.

A step runs the process's micro-batches, each one's loss a sum over answer tokens divided by the answer
tokens of the whole step on all processes, so gradient accumulation and data parallelism give the same
gradient as one big batch (DESIGN.md #3).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from multitune.config.schema import TrainConfig
from multitune.data.collate import model_inputs, pad_batch, real_tokens
from multitune.data.mixture import cached_mixture_order, step_micro_batches, steps_per_epoch
from multitune.data.packing import RowLengths, epoch_rows, pack_batch, planned_rows_per_epoch
from multitune.data.prepare import Prepared
from multitune.tracking import Trackers
from multitune.train.loss import answer_token_count, per_task_sums, token_losses


@dataclass
class StepResult:
    loss: float  # mean loss per answer token over the whole step (all micro-batches, all processes)
    grad_norm: float
    answer_tokens: int  # on all processes
    tokens: int  # non-padding tokens on all processes
    task_sums: torch.Tensor  # (n_tasks, 2): summed loss and answer tokens per task, all processes


def accumulate_gradients(
    model: Any, accelerator: Any, micro_batches: Sequence[dict[str, torch.Tensor]], n_tasks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward over this process's micro-batches, leaving in `.grad` the gradient of
    (sum of answer-token losses on all processes) / (answer tokens on all processes).

    Returns the step's [answer tokens, non-padding tokens] on all processes, and the (n_tasks, 2) summed
    loss and answer tokens per task on this process.
    """
    local_answer = sum(answer_token_count(mb["labels"]) for mb in micro_batches)
    local_tokens = sum(real_tokens(mb) for mb in micro_batches)
    counts = accelerator.reduce(torch.stack([local_answer, local_tokens]).to(accelerator.device), "sum")
    # DDP/FSDP average gradients over processes; multiplying by the world size turns that average back
    # into the sum over processes, which is then divided by the step's total answer tokens.
    scale = accelerator.num_processes / counts[0].clamp(min=1)
    task_sums = torch.zeros((n_tasks, 2), dtype=torch.float64, device=accelerator.device)
    for i, mb in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        # Only the last micro-batch synchronises gradients across processes.
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            logits = model(**model_inputs(mb), use_cache=False).logits
            token_loss = token_losses(logits, mb["labels"])  # (B, T-1)
            accelerator.backward(token_loss.sum() * scale)
        task_sums += per_task_sums(token_loss, mb["labels"], mb["task_ids"], n_tasks)
    return counts, task_sums


def train_step(
    model: Any, optimizer: Any, scheduler: Any, accelerator: Any, micro_batches: Sequence[dict[str, torch.Tensor]],
    max_grad_norm: float | None, n_tasks: int,
) -> StepResult:
    """One optimizer step over this process's micro-batches (already on the device)."""
    counts, task_sums = accumulate_gradients(model, accelerator, micro_batches, n_tasks)
    grad_norm = (
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm) if max_grad_norm is not None
        else _grad_norm(model)
    )
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    task_sums = accelerator.reduce(task_sums, "sum")
    return StepResult(
        loss=float(task_sums[:, 0].sum() / counts[0].clamp(min=1)), grad_norm=float(grad_norm),
        answer_tokens=int(counts[0]), tokens=int(counts[1]), task_sums=task_sums.cpu(),
    )


def _grad_norm(model: Any) -> torch.Tensor:
    grads = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.tensor(0.0)


@dataclass
class Plan:
    """The batch geometry of a run, derived once from the config and the data. With packing, the units
    of `epoch_size` and `micro_batch_size` are packed rows of up to `data.max_seq_len` tokens."""

    micro_batch_size: int
    grad_accum_steps: int
    world_size: int
    epoch_size: int
    steps_per_epoch: int
    total_steps: int
    packed: bool = False

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum_steps * self.world_size


def make_plan(cfg: TrainConfig, prepared: Prepared, seed: int, world_size: int) -> Plan:
    from multitune.errors import UserError

    global_batch = cfg.micro_batch_size * cfg.grad_accum_steps * world_size
    sizes, counts = tuple(prepared.task_sizes), tuple(prepared.epoch_counts)
    if prepared.pack_len is None:
        epoch_size = len(cached_mixture_order(sizes, counts, seed, 0))
    else:  # the same number of packed rows in every epoch (data/packing.py)
        epoch_size = planned_rows_per_epoch(sizes, counts, prepared.lengths, prepared.pack_len, seed, cfg.epochs,
                                            cfg.max_steps, global_batch)
    per_epoch = steps_per_epoch(epoch_size, global_batch)
    if per_epoch == 0:
        unit = "packed rows" if prepared.pack_len else "training examples"
        raise UserError(
            f"the global batch ({global_batch} = micro_batch_size x grad_accum_steps x {world_size} processes) "
            f"is larger than an epoch of {unit} ({epoch_size})",
            fix="lower train.micro_batch_size or train.grad_accum_steps, or add data",
        )
    total = cfg.max_steps if cfg.max_steps is not None else per_epoch * cfg.epochs
    return Plan(cfg.micro_batch_size, cfg.grad_accum_steps, world_size, epoch_size, per_epoch, total,
                packed=prepared.pack_len is not None)


def batches_for_step(
    prepared: Prepared, plan: Plan, step: int, seed: int, rank: int, pad_id: int, device: Any
) -> list[dict[str, torch.Tensor]]:
    """The micro-batches process `rank` runs at optimizer step `step` (a pure function of it): padded
    examples, or packed rows when `data.packing` is on."""
    epoch, step_in_epoch = divmod(step, plan.steps_per_epoch)
    sizes, counts = tuple(prepared.task_sizes), tuple(prepared.epoch_counts)
    geometry = (step_in_epoch, rank, plan.world_size, plan.micro_batch_size, plan.grad_accum_steps)
    if prepared.pack_len is None:
        order = cached_mixture_order(sizes, counts, seed, epoch)
        groups = step_micro_batches(order, *geometry, prepared.lengths)
        batches = [pad_batch([prepared.train[i] for i in g], pad_id) for g in groups]
    else:
        rows = epoch_rows(sizes, counts, prepared.lengths, prepared.pack_len, seed, epoch)
        groups = step_micro_batches(range(len(rows)), *geometry, RowLengths(rows, prepared.lengths))
        batches = [pack_batch([[prepared.train[i] for i in rows[r]] for r in g], pad_id) for g in groups]
    return [{k: v.to(device) for k, v in b.items()} for b in batches]


@dataclass
class Interval:
    """Sums over the steps since the last log line."""

    task_sums: torch.Tensor
    tokens: int = 0
    steps: int = 0
    started: float = 0.0

    @classmethod
    def start(cls, n_tasks: int) -> Interval:
        return cls(torch.zeros((n_tasks, 2), dtype=torch.float64), started=time.perf_counter())

    def add(self, r: StepResult) -> None:
        self.task_sums += r.task_sums
        self.tokens += r.tokens
        self.steps += 1

    def row(self, task_names: Sequence[str]) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        total = self.task_sums.sum(0)
        row = {"train/loss": float(total[0] / max(total[1], 1)), "tokens_per_s": self.tokens / elapsed}
        for name, (loss, n) in zip(task_names, self.task_sums.tolist(), strict=True):
            if n:
                row[f"train/{name}/loss"] = loss / n
        return row


def train_loop(
    model: Any, optimizer: Any, scheduler: Any, accelerator: Any, prepared: Prepared, plan: Plan,
    cfg: TrainConfig, seed: int, pad_id: int, trackers: Trackers, log_every_steps: int,
    on_step_end: Callable[[int], None] = lambda step: None, start_step: int = 0,
) -> None:
    """Run optimizer steps `start_step` .. plan.total_steps - 1, logging every `log_every_steps`.

    `on_step_end(step)` is called after each step with the number of completed steps (evaluation and
    checkpoints hang there).
    """
    from tqdm.auto import tqdm

    names = prepared.task_names
    bar = tqdm(total=plan.total_steps, initial=start_step, disable=not accelerator.is_main_process,
               desc="train", unit="step", dynamic_ncols=True)
    interval = Interval.start(len(names))
    model.train()
    for step in range(start_step, plan.total_steps):
        batches = batches_for_step(prepared, plan, step, seed, accelerator.process_index, pad_id, accelerator.device)
        lr = scheduler.get_last_lr()[0]
        result = train_step(model, optimizer, scheduler, accelerator, batches, cfg.max_grad_norm, len(names))
        interval.add(result)
        done = step + 1
        bar.update(1)
        if done % log_every_steps == 0 or done == plan.total_steps:
            row = interval.row(names)
            bar.set_postfix(loss=f"{row['train/loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")
            trackers.log({**row, "lr": lr, "grad_norm": result.grad_norm,
                          "epoch": done / plan.steps_per_epoch}, step=done)
            interval = Interval.start(len(names))
        on_step_end(done)
    bar.close()
