"""The mathematics of one optimizer step, for CPU, one GPU, DDP and FSDP alike (the topology comes from
accelerate): the batch geometry of a run (`make_plan`), the micro-batches of step N (`batches_for_step`)
and the step itself (`train_step`). The loop that runs the steps is in the training recipe.

A step runs the process's micro-batches, each one's loss a sum over answer tokens divided by the answer
tokens of the whole step on all processes, so gradient accumulation and data parallelism give the same
gradient as one big batch (DESIGN.md #3).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from multitune.config.schema import TrainConfig
from multitune.data.collate import model_inputs, pad_batch, real_tokens
from multitune.data.mixture import cached_mixture_order, step_micro_batches, steps_per_epoch
from multitune.data.packing import RowLengths, epoch_rows, pack_batch, planned_rows_per_epoch
from multitune.data.prefix import ROW_TOKENS, PrefixMask, shared_prefix_batch
from multitune.data.prepare import Prepared
from multitune.errors import UserError
from multitune.loss import (
    answer_positions,
    answer_token_count,
    logits_to_keep_argument,
    per_task_sums,
    token_losses,
    token_losses_at,
)
from multitune.train import shard
from multitune.train.state import StepResult


def forward_loss(model: Any, batch: dict[str, torch.Tensor], answer_logits_only: bool) -> torch.Tensor:
    """Next-token loss per position of one micro-batch, 0 off the answers: (B, T-1). A batch carries the
    mask the model's attention reads (shared-prefix rows: `Plan.prefix_mask`), so any layout runs as is."""
    inputs = model_inputs(batch)
    if not answer_logits_only:
        logits = model(**inputs, use_cache=False).logits  # (B, T, V)
        return token_losses(logits, batch["labels"])
    keep = answer_positions(batch["labels"])  # (B, T)
    to_keep, pick = logits_to_keep_argument(keep)
    logits = model(**inputs, use_cache=False, logits_to_keep=to_keep).logits  # (N, V) or (B, K, V)
    return token_losses_at(logits if pick is None else logits[pick], batch["labels"], keep)


def accumulate_gradients(
    model: Any, accelerator: Any, micro_batches: Sequence[dict[str, torch.Tensor]], n_tasks: int,
    answer_logits_only: bool = True,
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
        # Only the last micro-batch synchronises gradients across processes (under FSDP, the reduction
        # between copies: `shard.accumulating`).
        with contextlib.nullcontext() if last else shard.accumulating(model, accelerator):
            token_loss = forward_loss(model, mb, answer_logits_only)  # (B, T-1)
            accelerator.backward(token_loss.sum() * scale)
        task_sums += per_task_sums(token_loss, mb["labels"], mb["task_ids"], n_tasks)
    return counts, task_sums


def train_step(
    model: Any, optimizer: Any, scheduler: Any, accelerator: Any, micro_batches: Sequence[dict[str, torch.Tensor]],
    max_grad_norm: float | None, n_tasks: int, answer_logits_only: bool = True,
) -> StepResult:
    """One optimizer step over this process's micro-batches (already on the device).

    A step whose loss or gradient norm is not finite updates no weight (the schedule still advances,
    so the learning rate stays a function of the step). Both numbers are reduced over processes before
    the check, so every process takes the same decision. Under fp16 loss scaling the scaler takes that
    decision itself (`_step_through_scaler`).
    """
    counts, task_sums = accumulate_gradients(model, accelerator, micro_batches, n_tasks, answer_logits_only)
    grad_norm = (
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm) if max_grad_norm is not None
        else _grad_norm(model)
    )
    task_sums = accelerator.reduce(task_sums, "sum")
    result = StepResult(
        loss=float(task_sums[:, 0].sum() / counts[0].clamp(min=1)), grad_norm=float(grad_norm),
        answer_tokens=int(counts[0]), tokens=int(counts[1]), task_sums=task_sums.cpu(),
    )
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None:
        result.overflow = _step_through_scaler(optimizer, scaler, result)
    elif result.finite:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return result


# Below this the scale no longer explains a non-finite gradient (from 2**16, sixteen halvings): the
# gradients themselves are NaN or infinite, and the step counts as bad.
MIN_LOSS_SCALE = 1.0


def _step_through_scaler(optimizer: Any, scaler: Any, result: StepResult) -> bool:
    """fp16: every step goes through the GradScaler (accelerate's `optimizer.step()` calls its `step` and
    `update`). On inf/NaN gradients the scaler skips the weight update itself and lowers the scale;
    skipping the call instead would leave the scale where it overflowed and the scaler's state of this
    step unfinished, so the next step's unscale would raise. Returns whether this was such an overflow
    (finite loss, gradients non-finite at a scale still worth lowering)."""
    optimizer.step()
    return math.isfinite(result.loss) and not result.finite and scaler.get_scale() >= MIN_LOSS_SCALE


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
    share_prefix: bool = False  # padded micro-batches as shared-prefix rows (data/prefix.py)
    prefix_mask: PrefixMask | None = None  # the mask they carry, for the model's attention (models/attention.py)

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum_steps * self.world_size


def make_plan(cfg: TrainConfig, prepared: Prepared, seed: int, world_size: int, share_prefix: bool = False,
              prefix_mask: PrefixMask | None = None) -> Plan:
    """The run's batch geometry; `share_prefix` (the config's `shares_prefix`) lays padded micro-batches
    out as shared-prefix rows, carrying `prefix_mask` (`models.attention.select_for_shared_prefix`, decided
    from the model once; needed to make batches, not to count them)."""
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
                packed=prepared.pack_len is not None, share_prefix=share_prefix and prepared.pack_len is None,
                prefix_mask=prefix_mask)


def batches_for_step(
    prepared: Prepared, plan: Plan, step: int, seed: int, rank: int, pad_id: int, device: Any
) -> list[dict[str, torch.Tensor]]:
    """The micro-batches process `rank` runs at optimizer step `step` (a pure function of it): padded
    examples, the same as shared-prefix rows when the plan says so, or packed rows when `data.packing` is
    on."""
    epoch, step_in_epoch = divmod(step, plan.steps_per_epoch)
    sizes, counts = tuple(prepared.task_sizes), tuple(prepared.epoch_counts)
    geometry = (step_in_epoch, rank, plan.world_size, plan.micro_batch_size, plan.grad_accum_steps)
    if prepared.pack_len is None:
        order = cached_mixture_order(sizes, counts, seed, epoch)
        groups = step_micro_batches(order, *geometry, prepared.lengths)
        examples = [[prepared.train[i] for i in g] for g in groups]
        if plan.share_prefix:
            batches = [shared_prefix_batch(exs, pad_id, max(ROW_TOKENS, *(len(ex.input_ids) for ex in exs)),
                                           plan.prefix_mask) for exs in examples]
        else:
            batches = [pad_batch(exs, pad_id) for exs in examples]
    else:
        rows = epoch_rows(sizes, counts, prepared.lengths, prepared.pack_len, seed, epoch)
        groups = step_micro_batches(range(len(rows)), *geometry, RowLengths(rows, prepared.lengths))
        batches = [pack_batch([[prepared.train[i] for i in rows[r]] for r in g], pad_id) for g in groups]
    return [{k: v.to(device) for k, v in b.items()} for b in batches]
