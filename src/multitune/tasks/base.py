"""What every task kind produces: `Example`s, chat conversations with a known answer."""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from multitune.errors import UserError

Message = dict[str, str]


@dataclass(frozen=True)
class Example:
    """One row of a task, rendered as a chat.

    `messages` ends with the assistant's answer. `candidates` is the closed set of answers scoring picks
    from (a classification task's labels, a multiple-choice row's letters), with `label` the gold one;
    both are None for open-ended tasks. `choice_texts` holds a multiple-choice row's choice texts, in
    the order of `candidates` (evaluation can score them as answers, as lm-evaluation-harness does).
    """

    task: str
    row: int
    messages: tuple[Message, ...]
    label: str | None = None
    candidates: tuple[str, ...] | None = None
    choice_texts: tuple[str, ...] | None = None

    @property
    def prompt(self) -> tuple[Message, ...]:
        return self.messages[:-1]

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"]


class TaskKind(Protocol):
    """A task kind turns a task's rows into examples. One module per kind implements it."""

    def examples(self, cfg: Any, rows: Any) -> list[Example]: ...


def require_columns(rows: Any, wanted: Mapping[str, str], task: str) -> None:
    """Fail with the columns that exist and the config key to set when a wanted column is missing.

    `wanted` maps config key -> column name, e.g. {"text_column": "text"}.
    """
    have = list(rows.column_names)
    missing = [(key, col) for key, col in wanted.items() if col not in have]
    if missing:
        lines = [f"column {col!r} (from `{key}`) is not in the data" for key, col in missing]
        raise UserError(
            "; ".join(lines) + f". Columns present: {', '.join(have) or '(none)'}",
            where=f"task {task}",
            fix=" and ".join(f"set tasks.{task}.{key}=<one of the columns present>" for key, _ in missing),
        )


def chat(system: str | None, user: str, answer: str) -> tuple[Message, ...]:
    head = (({"role": "system", "content": system},) if system else ())
    return (*head, {"role": "user", "content": user}, {"role": "assistant", "content": answer})


def check_template(template: str, allowed: Iterable[str], task: str) -> None:
    """Refuse a prompt template that names a field the kind does not provide, before any row is read."""
    allowed = set(allowed)
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise UserError(f"prompt_template is not a valid format string: {e}", where=f"task {task}",
                        fix="write literal braces as {{ and }}") from None
    unknown = sorted(n for n in used if n not in allowed)
    if unknown:
        raise UserError(
            f"prompt_template uses unknown field(s) {', '.join('{' + n + '}' for n in unknown)}",
            where=f"task {task}",
            fix=f"use only {', '.join('{' + n + '}' for n in sorted(allowed))}",
        )


def text_cell(value: Any, column: str, row: int, task: str) -> str:
    """A cell that must hold text: refuse numbers, lists and missing values with the row number."""
    if isinstance(value, str):
        return value
    what = "empty" if value is None else f"a {type(value).__name__} ({value!r:.40})"
    raise UserError(
        f"column {column!r} should hold text but is {what}",
        where=f"task {task}, row {row}",
        fix="clean the row, or point the task's column setting at the column that holds the text",
    )
