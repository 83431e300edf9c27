"""What a task kind is (`TaskKind`), what it produces, `Example`s (chat conversations with a known answer),
and the row-level checks the kinds share: columns present, cells that must hold text, empty rows,
unlabelled rows."""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from multitune.errors import UserError
from multitune.tasks.config import TaskBase

Message = dict[str, str]
EmptyPolicy = Literal["drop", "error"]
SHOWN_ROWS = 10  # how many offending rows a message lists before "..."


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
    stratum: str | None = None
    """What the seeded split groups the row by when it is not `label`: a multiple-choice row answered
    with its choice's text is grouped by the choice's letter, so both answer formats hold out the same
    rows."""

    @property
    def prompt(self) -> tuple[Message, ...]:
        return self.messages[:-1]

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class Rendered:
    """A task's rows as examples, with the rows that were left out and why."""

    examples: list[Example]
    empty_rows: list[int] = field(default_factory=list)
    """Rows dropped because a text (or answer) was missing or blank (`data.empty_text: drop`)."""


class TaskKind(Protocol):
    """Everything multitune knows about one kind of task, in one class (nanochat's `Task`: a dataset of
    conversations with its metadata and evaluation criteria). One module per kind implements it and
    `multitune.tasks.KINDS` registers it; nothing else compares kind names.
    """

    name: str
    """What `kind:` says in a task's config."""
    config: type[TaskBase]
    """The kind's config section: `kind: Literal[name]` and its columns and template fields."""
    closed: bool
    """Answers come from a closed set of candidates and are scored: the model's log-likelihood of each
    candidate picks the answer, which `predict` writes with its score. Else they are generated (open) and
    judged by ROUGE/BLEU/chrF on greedy answers and by perplexity on the references."""
    labels: bool
    """The candidates are the task's label set, learnt from the training rows: the labels are saved with
    the run (`data_stats.json`), a separate validation file is checked against them (the kind is then a
    `LabelSetKind`), `predict` and `eval` score against them, the metrics add F1 and a confusion matrix,
    and a generated answer is read as a label (not a letter)."""
    choice_texts: bool
    """Rows carry the texts of their choices, which `eval.choice_texts` scores as answers too."""
    scored_metrics: tuple[str, ...]
    """What every evaluation reports, before generation adds its own."""
    primary_metric: str
    """The one number that says how good a task is (best checkpoint, tables, the card's trade-off)."""
    hub_task: str
    """The task type the model card's `model-index` gives the Hub for this kind's results."""
    card_name: str
    """How the model card names the kind ("multiple choice")."""
    card_limits: str
    """What the model card's intended-use section says the model cannot do on such a task ("" for nothing),
    after "`<task>` "."""

    def system_prompt(self, cfg: Any) -> str | None:
        """The system prompt the task trains with (None: no system turn of its own)."""
        ...

    def render(self, cfg: Any, rows: Any, *, labelled: bool = True, labels: list[str] | None = None,
               empty: EmptyPolicy = "error") -> Rendered:
        """Turn a task's rows into examples. `labelled=False` renders rows without answers, for prediction:
        the answer column is not read and blank inputs are kept (one prediction per input row). `labels`
        is a label-set kind's trained labels. `empty` says what to do with a row whose text is missing or
        blank."""
        ...


class ClosedKind(TaskKind, Protocol):
    """What a kind with `closed` answers adds: how a generated answer is read back as a candidate."""

    def read_answer(self, text: str, example: Example) -> str | None:
        """The candidate of `example` a generated answer names; None when it names none (an invalid answer,
        counted in `gen_invalid_rate`)."""
        ...


class LabelSetKind(ClosedKind, Protocol):
    """What a kind with `labels` adds: each row's gold label, read without rendering, so that a separate
    validation file is checked against the labels training saw (`data/prepare.py`)."""

    def gold_labels(self, cfg: Any, rows: Any) -> list[str | None]:
        """Each row's label name, None where the cell is empty."""
        ...


class EmptyText(UserError):
    """A cell that must hold text is missing or blank; `render_rows` drops the row or re-raises."""

    def __init__(self, column: str, row: int, task: str, what: str = "is empty"):
        self.column, self.row = column, row
        super().__init__(f"column {column!r} {what}", where=f"task {task}, row {row}",
                         fix="fill the row, or set data.empty_text=drop to leave such rows out (they are counted)")


class MissingAnswer(UserError):
    """A row that should be labelled has no answer; `render_rows` reports all such rows at once."""

    def __init__(self, column: str, row: int, task: str):
        self.column, self.row, self.task = column, row, task
        super().__init__(f"column {column!r} is empty", where=f"task {task}, row {row}")


def render_rows(
    n_rows: int, make: Callable[[int], Example | None], task: str, empty: EmptyPolicy, unlabelled_fix: str,
) -> Rendered:
    """Call `make(i)` for every row; apply the empty-text policy; refuse unlabelled rows, all listed at once.

    `make` returns the row's example, or raises `EmptyText` / `MissingAnswer` / another `UserError`.
    """
    out: list[Example] = []
    dropped: list[int] = []
    unlabelled: list[MissingAnswer] = []
    for i in range(n_rows):
        try:
            ex = make(i)
        except EmptyText:
            if empty == "error":
                raise
            dropped.append(i)
            continue
        except MissingAnswer as e:
            unlabelled.append(e)
            continue
        if ex is not None:
            out.append(ex)
    if unlabelled:
        rows = [e.row for e in unlabelled]
        raise UserError(
            f"{len(rows)} of {n_rows} rows have no answer (column {unlabelled[0].column!r} is empty): rows "
            f"{shown(rows)}. Unlabelled rows cannot be trained on or evaluated",
            where=f"task {task}", fix=unlabelled_fix,
        )
    return Rendered(out, dropped)


def shown(items: Iterable[Any]) -> str:
    """The first few items, comma-separated, with '...' when there are more."""
    items = list(items)
    head = ", ".join(map(str, items[:SHOWN_ROWS]))
    return head + (", ..." if len(items) > SHOWN_ROWS else "")


def require_columns(rows: Any, wanted: Mapping[str, str], task: str) -> None:
    """Fail with the columns that exist and the config key to set when a wanted column is missing.

    `wanted` maps config key -> column name, e.g. {"text_column": "text"}.
    """
    have = list(rows.column_names)
    missing = [(key, col) for key, col in wanted.items() if col not in have]
    if missing:
        lines = [f"column {col!r} (from `{key}`) is not in the data" for key, col in missing]
        # repr() shows what a plain print hides: a byte-order mark or a space in a CSV header.
        raise UserError(
            "; ".join(lines) + f". Columns present: {', '.join(map(repr, have)) or '(none)'}",
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


def text_cell(value: Any, column: str, row: int, task: str, *, required: bool = True) -> str:
    """A cell that must hold text. Numbers, lists and mappings are refused with the row number; a missing
    or blank cell raises `EmptyText` when `required`, else reads as "".

    >>> text_cell("hi", "text", 0, "t")
    'hi'
    >>> text_cell(None, "input", 0, "t", required=False)
    ''
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise EmptyText(column, row, task)
        return "" if value is None else value
    if isinstance(value, str):
        return value
    raise UserError(
        f"column {column!r} should hold text but holds a {type(value).__name__} ({value!r:.40})",
        where=f"task {task}, row {row}",
        fix="clean the row, or point the task's column setting at the column that holds the text",
    )


class OpenKind:
    """What the open kinds share (answers generated and judged by ROUGE/BLEU/chrF, perplexity on the
    references): a kind subclasses it and states its name, config section, default system prompt and
    `render`, and anything it says differently (its Hub task)."""

    closed, labels, choice_texts = False, False, False
    scored_metrics: tuple[str, ...] = ("loss", "perplexity")
    primary_metric = "rougeL"
    hub_task = "text-generation"
    card_limits = ""
    default_system: str | None = None

    def system_prompt(self, cfg: Any) -> str | None:
        return system_prompt(cfg, self.default_system)


def system_prompt(cfg: Any, default: str | None) -> str | None:
    """The task's system prompt: the config's when set ("" sends none), else the kind's default."""
    return default if cfg.system_prompt is None else (cfg.system_prompt or None)


def column(rows: Any, name: str) -> list[Any]:
    """A column's cells as a list (one read of the Arrow column; iterating a `datasets` column row by row
    is about 15x slower)."""
    return rows[name][:]
