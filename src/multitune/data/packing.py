"""Packing: several examples in one row of `max_seq_len` tokens, kept apart by position ids (DESIGN.md #4).

With transformers 5.x a batch that has `position_ids` restarting at 0 for each sequence, no
`attention_mask` and `use_cache=False` gets a block-diagonal causal mask under `sdpa` and `eager`: no
token attends across a sequence boundary, so a packed sequence's logits equal its logits run alone
(tests/data/test_packing.py proves it on the tiny model).

Three things keep the training maths identical to the padded layout:
- the first token of every packed sequence gets label IGNORE: in a padded row it has no predecessor and
  is never a target; in a packed row its predecessor is the previous sequence's last token;
- every token carries its example's task id (`task_ids`, (B, T), -1 on padding), so per-task losses stay
  per task when a row holds several tasks;
- the step's loss is still a sum over answer tokens divided by the step's answer tokens.

The epoch's packing is a pure function of (the mixture order, lengths, max_seq_len, seed, epoch), like
the mixture itself: exact resume needs nothing else.
"""

from __future__ import annotations

import bisect
import functools
import random
from collections.abc import Sequence

import torch

from multitune.data.mixture import cached_mixture_order
from multitune.data.tokenize import IGNORE, Tokenized


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Pack items into as few bins of `capacity` as best-fit decreasing finds; returns bins of indices.

    Items are placed longest first (ties in the given order), each into the bin it fills most tightly,
    a new bin when none has room. O(n log n) with a sorted list of free space.

    >>> best_fit_decreasing([5, 3, 4, 2, 6], capacity=10)
    [[4, 2], [0, 1, 3]]
    """
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"items {too_long[:5]} are longer than the capacity {capacity}")
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin index), sorted
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # sorted() is stable: ties keep order
        k = bisect.bisect_left(free, (lengths[i], -1))
        if k == len(free):
            bins.append([i])
            bisect.insort(free, (capacity - lengths[i], len(bins) - 1))
            continue
        space, b = free.pop(k)
        bins[b].append(i)
        bisect.insort(free, (space - lengths[i], b))
    return bins


@functools.lru_cache(maxsize=4)
def epoch_rows(
    task_sizes: tuple[int, ...], counts: tuple[int, ...], lengths: tuple[int, ...], capacity: int, seed: int,
    epoch: int,
) -> tuple[tuple[int, ...], ...]:
    """The packed rows of one epoch: the epoch's mixture order (example indices) packed best-fit
    decreasing into rows of at most `capacity` tokens, then shuffled with (seed, epoch)."""
    order = cached_mixture_order(task_sizes, counts, seed, epoch)
    bins = best_fit_decreasing([lengths[i] for i in order], capacity)
    rows = [tuple(order[j] for j in b) for b in bins]
    random.Random(f"{seed}:pack:{epoch}").shuffle(rows)
    return tuple(rows)


def rows_per_epoch(
    task_sizes: tuple[int, ...], counts: tuple[int, ...], lengths: tuple[int, ...], capacity: int, seed: int,
    epochs: int,
) -> int:
    """The fewest packed rows any of `epochs` epochs has: the plan takes that many rows from each, so
    every epoch has the same number of steps. Only an epoch that draws part of a task (a fractional
    share) can pack differently; whole copies of the same examples always pack into the same count."""
    whole = all(n == 0 or c % n == 0 for n, c in zip(task_sizes, counts, strict=True))
    return min(len(epoch_rows(task_sizes, counts, lengths, capacity, seed, e))
               for e in range(1 if whole else epochs))


def planned_rows_per_epoch(
    task_sizes: tuple[int, ...], counts: tuple[int, ...], lengths: tuple[int, ...], capacity: int, seed: int,
    epochs: int, max_steps: int | None, global_batch: int,
) -> int:
    """Packed rows the plan takes from every epoch of a run of `epochs` epochs, or of `max_steps` steps
    of `global_batch` rows (which then decides how many epochs the run spans)."""
    if max_steps is None:
        return rows_per_epoch(task_sizes, counts, lengths, capacity, seed, epochs)
    epochs = 1
    size = rows_per_epoch(task_sizes, counts, lengths, capacity, seed, epochs)
    # More epochs can only lower the minimum, so this settles after a few rounds.
    while size >= global_batch and -(-max_steps // (size // global_batch)) > epochs:
        epochs = -(-max_steps // (size // global_batch))
        size = rows_per_epoch(task_sizes, counts, lengths, capacity, seed, epochs)
    return size


class RowLengths:
    """Tokens of packed row r, computed when asked: a step looks at its own rows only."""

    def __init__(self, rows: Sequence[Sequence[int]], lengths: Sequence[int]):
        self.rows, self.lengths = rows, lengths

    def __getitem__(self, r: int) -> int:
        return sum(self.lengths[i] for i in self.rows[r])


def pack_batch(rows: Sequence[Sequence[Tokenized]], pad_id: int) -> dict[str, torch.Tensor]:
    """Packed rows -> tensors, right-padded to the longest row.

    Returns input_ids, labels, position_ids, task_ids: (B, T). Position ids restart at 0 for every
    sequence and for the padding tail; labels are IGNORE on each sequence's first token and on padding;
    task_ids are -1 on padding. No attention_mask, on purpose (module docstring).

    >>> a, b = Tokenized([1, 2, 3], [-100, 2, 3], 0), Tokenized([4, 5], [-100, 5], 1)
    >>> out = pack_batch([[a, b]], pad_id=0)
    >>> out["position_ids"].tolist(), out["labels"].tolist(), out["task_ids"].tolist()
    ([[0, 1, 2, 0, 1]], [[-100, 2, 3, -100, 5]], [[0, 0, 0, 1, 1]])
    """
    width = max(sum(len(ex.input_ids) for ex in row) for row in rows)
    shape = (len(rows), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    task_ids = torch.full(shape, -1, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for ex in row:
            n = len(ex.input_ids)
            ids[r, start:start + n] = torch.tensor(ex.input_ids)
            labels[r, start + 1:start + n] = torch.tensor(ex.labels[1:], dtype=torch.long)
            positions[r, start:start + n] = torch.arange(n)
            task_ids[r, start:start + n] = ex.task_id
            start += n
        positions[r, start:] = torch.arange(width - start)
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "task_ids": task_ids}


def padding_share(rows: Sequence[Sequence[int]], lengths: Sequence[int], micro_batches: Sequence[Sequence[int]]) -> float:
    """Share of padding tokens when `rows` (example indices) are batched as `micro_batches` (row indices),
    each micro-batch padded to its longest row."""
    real = padded = 0
    for mb in micro_batches:
        row_lengths = [sum(lengths[i] for i in rows[r]) for r in mb]
        real += sum(row_lengths)
        padded += max(row_lengths) * len(row_lengths)
    return 1 - real / padded if padded else 0.0
