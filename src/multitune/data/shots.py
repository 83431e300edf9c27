"""In-context examples for the k-shot baseline (`eval.baseline_shots`), as pure functions.

The untrained model is shown k solved examples of a task before each validation row, as earlier turns of
the same chat: the in-context learning a user could do instead of fine-tuning. The k examples are drawn
once per task with the run's seed from its training examples, never from its validation ones, and are
the same for every row (so a k-shot prompt's start is shared by every row, and computed once).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from multitune.tasks.base import Example


def draw_shots(train: Sequence[Example], k: int, seed: int, task: str) -> list[Example]:
    """k of a task's training examples, drawn with the seed (every one when there are fewer than k).

    >>> from multitune.tasks.base import chat
    >>> train = [Example("t", i, chat(None, f"q{i}", f"a{i}")) for i in range(10)]
    >>> [ex.row for ex in draw_shots(train, 3, seed=0, task="t")] == [ex.row for ex in draw_shots(train, 3, 0, "t")]
    True
    >>> len(draw_shots(train, 20, 0, "t")), draw_shots(train, 0, 0, "t")
    (10, [])
    """
    if k <= 0 or not train:
        return []
    picked = random.Random(f"{seed}:shots:{task}").sample(range(len(train)), min(k, len(train)))
    return [train[i] for i in picked]


def with_shots(example: Example, shots: Sequence[Example]) -> Example:
    """`example` with each shot's user and assistant turns placed before its own, after its system prompt
    (a shot's own system prompt, the task's, is not repeated). Only the last answer is the row's.

    >>> from multitune.tasks.base import chat
    >>> shot = Example("t", 7, chat("Be brief.", "2+2?", "4"))
    >>> [m["content"] for m in with_shots(Example("t", 1, chat("Be brief.", "3+3?", "6")), [shot]).messages]
    ['Be brief.', '2+2?', '4', '3+3?', '6']
    """
    system = example.messages[:1] if example.messages and example.messages[0]["role"] == "system" else ()
    turns = tuple(m for shot in shots for m in shot.messages if m["role"] != "system")
    return replace(example, messages=(*system, *turns, *example.messages[len(system):]))
