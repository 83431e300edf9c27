"""The seeded train/validation split: the same rows land on the same side on every run and machine."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from multitune.tasks.base import Example


def train_val_split(
    examples: Sequence[Example], val_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Hold out `val_fraction` of each label's rows (all rows when unlabelled) for validation; a row
    with a `stratum` counts under it instead of its label.

    Each label group is shuffled by a generator seeded with (seed, task, label), so adding a task or a
    label elsewhere never moves these rows. Every label keeps at least one training row (a label with
    a single row stays in training). Both sides keep the source's row order.

    >>> from multitune.tasks.base import Example
    >>> rows = [Example("t", i, (), label="ab"[i % 2]) for i in range(10)]
    >>> train, val = train_val_split(rows, 0.2, seed=0)
    >>> len(train), len(val), sorted(e.label for e in val)
    (8, 2, ['a', 'b'])
    """
    groups: dict[str | None, list[Example]] = defaultdict(list)
    for ex in examples:
        groups[ex.label if ex.stratum is None else ex.stratum].append(ex)
    held_out: set[int] = set()
    for label, group in groups.items():
        task = group[0].task
        order = [ex.row for ex in group]
        random.Random(f"{seed}:{task}:{label}").shuffle(order)
        n_val = min(round(len(group) * val_fraction), len(group) - 1)
        held_out.update(order[:n_val])
    train = [ex for ex in examples if ex.row not in held_out]
    val = [ex for ex in examples if ex.row in held_out]
    return train, val
