"""Task kinds, and the one registry of them that everything else reads.

A kind is one class in one module (`tasks/<kind>.py`, the `TaskKind` protocol): its config section, how
a row becomes messages, what the answer and the candidates are, whether answers are closed or open, its
metrics and primary metric, its Hub task type and model-card wording. Adding a kind is that module and
one line in `BUILT_IN` below (or one `register(...)` call, as the tests do with a toy kind).

Why the registry sits here, on the floor below the config: the run config is assembled from the kinds'
own sections, so it must be able to read them without importing upward. `tasks` imports only the lowest
floor (`errors`, `section`); `kinds` / `best` / `stall` read the kinds' facts from here, and the config
validates each `tasks:` entry with the section of the kind it names, looked up here when it validates
(so a kind registered later, by a test or a plugin, is validated like a built-in one).
"""

from __future__ import annotations

from typing import Any, get_args

from multitune.tasks import chat, classification, instruction, multiple_choice, summarization
from multitune.tasks.base import ClosedKind, EmptyPolicy, Example, LabelSetKind, Message, Rendered, TaskKind
from multitune.tasks.config import TaskBase

BUILT_IN: tuple[TaskKind, ...] = (
    classification.Classification(),
    multiple_choice.MultipleChoice(),
    instruction.Instruction(),
    chat.Chat(),
    summarization.Summarization(),
)
KINDS: dict[str, TaskKind] = {}
"""Kind name -> its class's instance, in registration order (the order error messages list them)."""


def register(kind: TaskKind) -> TaskKind:
    """Add a kind to the registry (`register(YesNo())`), refusing what the rest of multitune could not use:
    a name already taken, a config section that does not name the kind, a closed kind that cannot read a
    generated answer, a label-set kind that cannot read its gold labels. Returns the kind."""
    taken = KINDS.get(kind.name)
    if taken is not None and taken is not kind:
        raise ValueError(f"task kind {kind.name!r} is already registered ({type(taken).__name__})")
    if get_args(kind.config.model_fields["kind"].annotation) != (kind.name,):
        raise ValueError(f"task kind {kind.name!r}: its config section must set `kind: Literal[{kind.name!r}]`")
    if kind.closed and not callable(getattr(kind, "read_answer", None)):
        raise ValueError(f"task kind {kind.name!r} has closed answers but no read_answer(text, example)")
    if kind.labels and not callable(getattr(kind, "gold_labels", None)):
        raise ValueError(f"task kind {kind.name!r} has a label set (labels = True) but no gold_labels(cfg, rows)")
    KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Take a kind out of the registry (tests that register a toy kind clean up with it)."""
    KINDS.pop(name, None)


def kind(name: str) -> TaskKind:
    """The registered kind of this name (the config admits only registered names)."""
    return KINDS[name]


def render(
    cfg: Any, rows: Any, *, labelled: bool = True, labels: list[str] | None = None, empty: EmptyPolicy = "error",
) -> Rendered:
    """Render every row of a task through its kind, with the rows left out and why.

    `labelled=False` renders rows without answers (for prediction); a label-set kind then needs
    `labels`, the label set it was trained with. `empty` is the policy for missing or blank texts.
    """
    return kind(cfg.kind).render(cfg, rows, labelled=labelled, labels=labels, empty=empty)


def examples(cfg: Any, rows: Any, *, labelled: bool = True, labels: list[str] | None = None) -> list[Example]:
    """`render(...).examples`, refusing blank texts: one example per row, in order."""
    return render(cfg, rows, labelled=labelled, labels=labels).examples


for _built_in in BUILT_IN:
    register(_built_in)

__all__ = ["BUILT_IN", "KINDS", "ClosedKind", "Example", "LabelSetKind", "Message", "Rendered", "TaskBase",
           "TaskKind", "examples", "kind", "register", "render", "unregister"]
