"""The multi-task mixture and the order in which training examples are seen, as pure functions.

`epoch_counts` turns task sizes, weights and the mixture strategy into examples per task per epoch;
`mixture_order` turns those counts, the seed and the epoch into the epoch's shuffled order. Both are
functions of their arguments only: the same inputs give the same batches on every run, machine and process
count, which is what exact resume stands on.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence


def epoch_counts(
    task_sizes: Sequence[int], weights: Sequence[float], strategy: str = "proportional", temperature: float = 1.0,
    caps: Sequence[int | None] | None = None,
) -> tuple[int, ...]:
    """Training examples each task contributes to one epoch.

    The epoch holds as many examples as `proportional` gives, sum(size x weight); each task's share is
    size x weight (`proportional`), weight (`equal`) or size^(1/T) x weight (`temperature`), rounded to
    whole examples. `caps` then limit a task (None: no cap). A task with rows never gets 0.

    >>> epoch_counts([100, 10], [1.0, 1.0])
    (100, 10)
    >>> epoch_counts([100, 10], [1.0, 1.0], "equal")
    (55, 55)
    >>> epoch_counts([100, 10], [1.0, 1.0], "temperature", temperature=2.0)
    (84, 26)
    >>> epoch_counts([100, 10], [1.0, 1.0], "equal", caps=[None, 20])
    (55, 20)
    """
    if strategy == "proportional":
        counts = [_proportional(n, w) for n, w in zip(task_sizes, weights, strict=True)]
    else:
        exponent = 0.0 if strategy == "equal" else 1.0 / temperature
        shares = [w * n**exponent if n else 0.0 for n, w in zip(task_sizes, weights, strict=True)]
        total = sum(_proportional(n, w) for n, w in zip(task_sizes, weights, strict=True))
        counts = [round(total * s / sum(shares)) for s in shares]
    counts = [max(c, 1) if n else 0 for c, n in zip(counts, task_sizes, strict=True)]
    if caps is not None:
        counts = [c if cap is None else min(c, cap) for c, cap in zip(counts, caps, strict=True)]
    return tuple(counts)


def _proportional(size: int, weight: float) -> int:
    whole, frac = divmod(weight, 1.0)
    return int(whole) * size + round(frac * size)


def mixture_order(task_sizes: Sequence[int], counts: Sequence[int], seed: int, epoch: int) -> list[int]:
    """Indices into the tasks' concatenated training examples for one epoch, shuffled.

    A task with n examples and count c contributes c // n copies of every example plus c % n examples
    drawn without replacement (a different draw each epoch).

    >>> sorted(mixture_order([3, 2], [3, 4], seed=0, epoch=0))
    [0, 1, 2, 3, 3, 4, 4]
    >>> mixture_order([3, 2], [3, 4], 0, 0) == mixture_order([3, 2], [3, 4], 0, 0)
    True
    """
    order: list[int] = []
    offset = 0
    for task_id, (n, count) in enumerate(zip(task_sizes, counts, strict=True)):
        indices = list(range(offset, offset + n))
        whole, extra = divmod(count, n) if n else (0, 0)
        order.extend(indices * whole)
        if extra:
            order.extend(random.Random(f"{seed}:mix:{epoch}:{task_id}").sample(indices, extra))
        offset += n
    random.Random(f"{seed}:order:{epoch}").shuffle(order)
    return order


def epoch_order(task_sizes: Sequence[int], weights: Sequence[float], seed: int, epoch: int) -> list[int]:
    """`mixture_order` with proportional counts: weight w gives floor(w) copies of every example plus
    round(frac(w) x n) drawn (weight 1 is every example once, 0.5 half of them).

    >>> sorted(epoch_order([3, 2], [1.0, 2.0], seed=0, epoch=0))
    [0, 1, 2, 3, 3, 4, 4]
    """
    return mixture_order(task_sizes, epoch_counts(task_sizes, weights), seed, epoch)


@functools.lru_cache(maxsize=4)
def cached_mixture_order(
    task_sizes: tuple[int, ...], counts: tuple[int, ...], seed: int, epoch: int
) -> tuple[int, ...]:
    """`mixture_order` memoised: the loop asks for the same epoch's order at every step of it."""
    return tuple(mixture_order(task_sizes, counts, seed, epoch))


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
