"""Classification: a text and one label from a fixed set (TextClaimsDataset, banking77).

The label set comes from `labels` in the config, else from the names of a `ClassLabel` column, else from
the sorted distinct values. A label cell may hold the name or, with a `ClassLabel` column, its id.
Scoring picks the label whose tokens the model finds most likely.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from multitune.errors import UserError
from multitune.tasks.answers import parse_label
from multitune.tasks.base import (
    EmptyPolicy,
    Example,
    MissingAnswer,
    Rendered,
    chat,
    check_template,
    column,
    render_rows,
    require_columns,
    shown,
    system_prompt,
    text_cell,
)
from multitune.tasks.config import TaskBase

DEFAULT_SYSTEM = "Classify the user's text. Reply with the label only."
# Listing the labels helps an instruct model zero-shot but costs tokens on every example; past this many
# labels (banking77 has 77) the default prompt leaves them out and the model learns them from the answers.
LIST_LABELS_UP_TO = 20
TEMPLATE_WITH_LABELS = "Labels: {labels}\n\nText: {text}"
TEMPLATE_WITHOUT_LABELS = "Text: {text}"
FIELDS = ("text", "labels")


class ClassificationTask(TaskBase):
    """Template fields: `{text}`, `{labels}` (the label names, or one `name: description` line each when
    `label_descriptions` is set)."""

    kind: Literal["classification"]
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None
    """The label set, in order. Default: read from the data (names of a `ClassLabel` column, or the
    sorted distinct strings)."""
    label_descriptions: dict[str, str] | None = None
    """What each label means, shown to the model beside the label list (`{labels}` in the template)."""


def label_names(cfg: ClassificationTask, rows: Any) -> list[str]:
    """The task's labels in order: from the config, a ClassLabel feature, or the sorted distinct values
    (case-insensitively, as the Hub orders ClassLabel names, so banking77's CSV and parquet layouts give
    the same list; numerically when they are all integers)."""
    if cfg.labels is not None:
        return list(cfg.labels)
    names = _class_names(cfg, rows)
    if names:
        return names
    values = {v for v in column(rows, cfg.label_column) if v is not None and str(v).strip() != ""}
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return [str(v) for v in sorted(values)]
    return sorted({str(v) for v in values}, key=lambda s: (s.casefold(), s))


def default_template(n_labels: int) -> str:
    return TEMPLATE_WITH_LABELS if n_labels <= LIST_LABELS_UP_TO else TEMPLATE_WITHOUT_LABELS


def render(
    cfg: ClassificationTask, rows: Any, *, labelled: bool = True, labels: list[str] | None = None,
    empty: EmptyPolicy = "error",
) -> Rendered:
    """Render rows as examples. `labelled=False` (prediction) reads no label column and needs `labels`,
    the label set the model was trained with."""
    wanted = {"text_column": cfg.text_column} | ({"label_column": cfg.label_column} if labelled else {})
    require_columns(rows, wanted, cfg.name)
    labels = labels if labels is not None else label_names(cfg, rows)
    if len(labels) < 2:
        raise UserError(f"a classification task needs at least 2 labels, found {labels}", where=f"task {cfg.name}",
                        fix=f"check tasks.{cfg.name}.label_column, or list the labels in tasks.{cfg.name}.labels")
    template = cfg.prompt_template or default_template(len(labels))
    check_template(template, FIELDS, cfg.name)
    listed = _listed_labels(cfg, labels)
    system = system_prompt(cfg, DEFAULT_SYSTEM)
    texts = column(rows, cfg.text_column)
    gold = gold_labels(cfg, rows) if labelled else [None] * len(texts)
    if labelled:
        _refuse_unknown_labels(gold, labels, cfg)
    candidates = tuple(labels)

    def make(i: int) -> Example:
        text = text_cell(texts[i], cfg.text_column, i, cfg.name, required=labelled)
        user = template.format(text=text, labels=listed)
        if not labelled:
            return Example(cfg.name, i, chat(system, user, ""), candidates=candidates)
        if gold[i] is None:
            raise MissingAnswer(cfg.label_column, i, cfg.name)
        return Example(cfg.name, i, chat(system, user, gold[i]), label=gold[i], candidates=candidates)

    return render_rows(len(texts), make, cfg.name, empty,
                       unlabelled_fix="label every row, or remove unlabelled rows from the source")


class Classification:
    """The `classification` kind (`multitune.tasks.base.TaskKind`)."""

    name = "classification"
    config = ClassificationTask
    closed, labels, choice_texts = True, True, False
    scored_metrics = ("loss", "accuracy", "macro_f1", "weighted_f1")
    primary_metric = "accuracy"
    hub_task = "text-classification"
    card_name = "classification"
    card_limits = "answers with one of the labels it was trained on; it has no way to say that none applies."

    def system_prompt(self, cfg: ClassificationTask) -> str | None:
        return system_prompt(cfg, DEFAULT_SYSTEM)

    render = staticmethod(render)

    def gold_labels(self, cfg: ClassificationTask, rows: Any) -> list[str | None]:
        return gold_labels(cfg, rows)

    def read_answer(self, text: str, example: Example) -> str | None:
        return parse_label(text, example.candidates or ())


def gold_labels(cfg: ClassificationTask, rows: Any) -> list[str | None]:
    """Each row's label name (None when the cell is empty), ids read through the ClassLabel names."""
    names = _class_names(cfg, rows)
    return [_label(raw, names) for raw in column(rows, cfg.label_column)]


def _class_names(cfg: ClassificationTask, rows: Any) -> list[str] | None:
    feature = rows.features.get(cfg.label_column)
    names = getattr(feature, "names", None)
    return list(names) if names else None


def _label(raw: Any, names: list[str] | None) -> str | None:
    """A label cell as the label's name; None when empty. Ids map through the ClassLabel names; an id
    outside them stays as its number and is reported as an unknown label."""
    if raw is None or str(raw).strip() == "":
        return None
    if names is not None and isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(names):
        return names[raw]
    return str(raw)


def _refuse_unknown_labels(gold: list[str | None], labels: list[str], cfg: ClassificationTask) -> None:
    known = set(labels)
    unknown = Counter(g for g in gold if g is not None and g not in known)
    if not unknown:
        return
    rows = [i for i, g in enumerate(gold) if g in unknown]
    listed = shown(f"{label!r} ({n} rows)" for label, n in unknown.most_common())
    raise UserError(
        f"{len(unknown)} label(s) in column {cfg.label_column!r} are not in the task's label set of "
        f"{len(labels)}: {listed}; first rows: {shown(rows)}",
        where=f"task {cfg.name}",
        fix=f"add them to tasks.{cfg.name}.labels, or fix the rows" if cfg.labels is not None else
            "fix the rows (a label id must be one of the ClassLabel ids)",
    )


def _listed_labels(cfg: ClassificationTask, labels: list[str]) -> str:
    """What `{labels}` renders as: the names, or one `- name: description` line each."""
    descriptions = cfg.label_descriptions
    if not descriptions:
        return ", ".join(labels)
    unknown = sorted(set(descriptions) - set(labels))
    if unknown:
        raise UserError(f"label_descriptions names labels that are not in the label set: {', '.join(unknown)}",
                        where=f"task {cfg.name}", fix=f"use only: {shown(labels)}")
    lines = [f"- {name}: {descriptions[name]}" if name in descriptions else f"- {name}" for name in labels]
    return "\n" + "\n".join(lines)
