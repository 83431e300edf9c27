"""Task kinds: each turns rows into chat `Example`s with a known answer. One module per kind."""

from __future__ import annotations

from typing import Any

from multitune.tasks import chat, classification, instruction, multiple_choice, summarization
from multitune.tasks.base import EmptyPolicy, Example, Message, Rendered

KINDS = {
    "classification": classification,
    "multiple_choice": multiple_choice,
    "instruction": instruction,
    "chat": chat,
    "summarization": summarization,
}


def render(
    cfg: Any, rows: Any, *, labelled: bool = True, labels: list[str] | None = None, empty: EmptyPolicy = "error",
) -> Rendered:
    """Render every row of a task through its kind's module, with the rows left out and why.

    `labelled=False` renders rows without answers (for prediction); a classification task then needs
    `labels`, the label set it was trained with. `empty` is the policy for missing or blank texts.
    """
    return KINDS[cfg.kind].render(cfg, rows, labelled=labelled, labels=labels, empty=empty)


def examples(cfg: Any, rows: Any, *, labelled: bool = True, labels: list[str] | None = None) -> list[Example]:
    """`render(...).examples`, refusing blank texts: one example per row, in order."""
    return render(cfg, rows, labelled=labelled, labels=labels).examples


__all__ = ["KINDS", "Example", "Message", "Rendered", "examples", "render"]
