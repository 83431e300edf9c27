"""Task kinds: each turns rows into chat `Example`s with a known answer. One module per kind."""

from __future__ import annotations

from typing import Any

from multitune.tasks import classification, instruction, multiple_choice
from multitune.tasks.base import Example, Message

KINDS = {
    "classification": classification,
    "multiple_choice": multiple_choice,
    "instruction": instruction,
}


def examples(cfg: Any, rows: Any, *, labelled: bool = True, labels: list[str] | None = None) -> list[Example]:
    """Render every row of a task as an `Example` through its kind's module.

    `labelled=False` renders rows without answers (for prediction); a classification task then needs
    `labels`, the label set it was trained with.
    """
    return KINDS[cfg.kind].examples(cfg, rows, labelled=labelled, labels=labels)


__all__ = ["KINDS", "Example", "Message", "examples"]
