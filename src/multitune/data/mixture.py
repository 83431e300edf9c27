"""The multi-task mixture and the order in which training examples are seen, as pure functions.

Everything here is a function of (sizes, weights, seed, epoch, step): the same inputs give the same
batches on every run, machine and process count, which is what exact resume stands on.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence


def epoch_order(task_sizes: Sequence[int], weights: Sequence[float], seed: int, epoch: int) -> list[int]:
    """Indices into the tasks' concatenated training examples for one epoch, shuffled.

    A task with weight w contributes floor(w) copies of every example plus round(frac(w) * n) examples
    drawn without replacement, so weight 1 is every example once and 0.5 is half of them (a different
    half each epoch).

    >>> epoch_order([3, 2], [1.0, 1.0], seed=0, epoch=0) == epoch_order([3, 2], [1.0, 1.0], seed=0, epoch=0)
    True
    >>> sorted(epoch_order([3, 2], [1.0, 2.0], seed=0, epoch=0))
    [0, 1, 2, 3, 3, 4, 4]
    """
    order: list[int] = []
    offset = 0
    for task_id, (n, weight) in enumerate(zip(task_sizes, weights, strict=True)):
        whole, frac = divmod(weight, 1.0)
        indices = list(range(offset, offset + n))
        order.extend(indices * int(whole))
        extra = round(frac * n)
        if extra:
            order.extend(random.Random(f"{seed}:mix:{epoch}:{task_id}").sample(indices, extra))
        offset += n
    random.Random(f"{seed}:order:{epoch}").shuffle(order)
    return order


@functools.lru_cache(maxsize=2)
def cached_epoch_order(
    task_sizes: tuple[int, ...], weights: tuple[float, ...], seed: int, epoch: int
) -> tuple[int, ...]:
    """`epoch_order` memoised: the loop asks for the same epoch's order at every step of it."""
    return tuple(epoch_order(task_sizes, weights, seed, epoch))


def steps_per_epoch(epoch_size: int, global_batch_size: int) -> int:
    """Optimizer steps in one epoch; the incomplete last global batch is left out (it is reshuffled into
    the next epoch), so every step has the same batch geometry."""
    return epoch_size // global_batch_size


def step_micro_batches(
    order: Sequence[int], step_in_epoch: int, rank: int, world_size: int, micro_batch_size: int,
    grad_accum_steps: int, lengths: Sequence[int],
) -> list[list[int]]:
    """The micro-batches (lists of example indices) that process `rank` runs for one optimizer step.

    The global batch is cut into one contiguous slice per process; each slice is sorted by length
    before being cut into micro-batches, which reduces padding without changing the step's gradient
    (the loss is a sum over tokens normalised by the step's answer-token count).
    """
    per_rank = micro_batch_size * grad_accum_steps
    start = step_in_epoch * per_rank * world_size + rank * per_rank
    mine = sorted(order[start:start + per_rank], key=lambda i: (lengths[i], i))
    return [mine[i:i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]
