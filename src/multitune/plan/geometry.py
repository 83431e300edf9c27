"""The batches a run will compute, from the prepared data alone (no tensors): per micro-batch its rows,
padded width, answer positions, real tokens and sequence lengths. The same pure functions of the seed,
the epoch and the step that the training loop uses decide them, so these are the run's batches."""

from __future__ import annotations

from dataclasses import dataclass

from multitune.data.mixture import cached_mixture_order, step_micro_batches
from multitune.data.packing import RowLengths, epoch_rows
from multitune.data.prefix import ROW_TOKENS, row_lengths
from multitune.data.prepare import Prepared
from multitune.plan.activations import MicroBatch


@dataclass(frozen=True)
class Batch:
    shape: MicroBatch
    real_tokens: int
    answer_tokens: int
    lengths: tuple[int, ...]
    """Every sequence's length (a packed row holds several)."""
    step: int


def epoch_batches(prepared: Prepared, micro_batch_size: int, grad_accum_steps: int, world_size: int,
                  steps: int, seed: int, answer_logits_only: bool, epoch: int = 0,
                  share_prefix: bool = False) -> list[Batch]:
    """Every micro-batch of the first `steps` optimizer steps of `epoch`, on every process; with
    `share_prefix`, shaped as the shared-prefix rows training lays padded micro-batches down in."""
    sizes, counts = tuple(prepared.task_sizes), tuple(prepared.epoch_counts)
    train, lengths = prepared.train, prepared.lengths
    if prepared.pack_len is None:
        order, rows, row_len = list(cached_mixture_order(sizes, counts, seed, epoch)), None, lengths
    else:
        rows = epoch_rows(sizes, counts, lengths, prepared.pack_len, seed, epoch)
        order, row_len = list(range(len(rows))), RowLengths(rows, lengths)
    out = []
    for step in range(steps):
        for rank in range(world_size):
            for group in step_micro_batches(order, step, rank, world_size, micro_batch_size, grad_accum_steps,
                                            row_len):
                if not group:
                    continue
                members = [[i] for i in group] if rows is None else [list(rows[r]) for r in group]
                seqs = tuple(lengths[i] for m in members for i in m)
                widths = [sum(lengths[i] for i in m) for m in members]
                if share_prefix and rows is None:
                    exs = [train[i] for i in group]
                    widths = row_lengths(exs, max(ROW_TOKENS, *seqs))
                width = max(widths)
                answers = sum(train[i].n_answer_tokens for m in members for i in m)
                logit_positions = answers if answer_logits_only else len(widths) * width
                out.append(Batch(MicroBatch(len(widths), width, logit_positions), sum(seqs), answers, seqs, step))
    return out
