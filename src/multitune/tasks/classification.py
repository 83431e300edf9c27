"""Classification: a text and one label from a fixed set (TextClaimsDataset, banking77).

The label set comes from `labels` in the config, else from the names of a `ClassLabel` column, else from
the sorted distinct values. Scoring picks the label whose tokens the model finds most likely.
"""

from __future__ import annotations

from typing import Any

from multitune.config.schema import ClassificationTask
from multitune.errors import UserError
from multitune.tasks.base import Example, chat, check_template, require_columns, text_cell

DEFAULT_SYSTEM = "Classify the user's text. Reply with the label only."
# Listing the labels helps an instruct model zero-shot but costs tokens on every example; past this many
# labels (banking77 has 77) the default prompt leaves them out and the model learns them from the answers.
LIST_LABELS_UP_TO = 20
TEMPLATE_WITH_LABELS = "Labels: {labels}\n\nText: {text}"
TEMPLATE_WITHOUT_LABELS = "Text: {text}"
FIELDS = ("text", "labels")


def label_names(cfg: ClassificationTask, rows: Any) -> list[str]:
    """The task's labels in order: from the config, a ClassLabel feature, or the sorted distinct values."""
    if cfg.labels is not None:
        return list(cfg.labels)
    feature = rows.features.get(cfg.label_column)
    names = getattr(feature, "names", None)
    if names:
        return list(names)
    values = {v for v in rows[cfg.label_column] if v is not None and v != ""}
    return sorted(str(v) for v in values)


def default_template(n_labels: int) -> str:
    return TEMPLATE_WITH_LABELS if n_labels <= LIST_LABELS_UP_TO else TEMPLATE_WITHOUT_LABELS


def examples(
    cfg: ClassificationTask, rows: Any, *, labelled: bool = True, labels: list[str] | None = None
) -> list[Example]:
    """Render rows as examples. `labelled=False` (prediction) reads no label column and needs `labels`,
    the label set the model was trained with."""
    wanted = {"text_column": cfg.text_column} | ({"label_column": cfg.label_column} if labelled else {})
    require_columns(rows, wanted, cfg.name)
    labels = labels if labels is not None else label_names(cfg, rows)
    if len(labels) < 2:
        raise UserError(f"a classification task needs at least 2 labels, found {labels}", where=f"task {cfg.name}")
    template = cfg.prompt_template or default_template(len(labels))
    check_template(template, FIELDS, cfg.name)
    system = DEFAULT_SYSTEM if cfg.system_prompt is None else cfg.system_prompt
    names = getattr(rows.features.get(cfg.label_column), "names", None)
    candidates = tuple(labels)
    known = set(labels)
    raw_labels = rows[cfg.label_column] if labelled else [None] * len(rows)
    out = []
    for i, (text, raw_label) in enumerate(zip(rows[cfg.text_column], raw_labels, strict=True)):
        text = text_cell(text, cfg.text_column, i, cfg.name)
        user = template.format(text=text, labels=", ".join(labels))
        if not labelled:
            out.append(Example(cfg.name, i, chat(system, user, ""), candidates=candidates))
            continue
        label = _label(raw_label, names, i, cfg)
        if label not in known:
            raise UserError(
                f"label {label!r} is not in the task's label set ({len(labels)} labels)",
                where=f"task {cfg.name}, row {i}",
                fix=f"add it to tasks.{cfg.name}.labels, or fix the row",
            )
        out.append(Example(cfg.name, i, chat(system, user, label), label=label, candidates=candidates))
    return out


def _label(raw: Any, names: list[str] | None, row: int, cfg: ClassificationTask) -> str:
    if names is not None and isinstance(raw, int) and not isinstance(raw, bool):
        if not 0 <= raw < len(names):
            raise UserError(f"label id {raw} is outside the {len(names)} class names",
                            where=f"task {cfg.name}, row {row}")
        return names[raw]
    if raw is None or raw == "":
        raise UserError(f"column {cfg.label_column!r} is empty", where=f"task {cfg.name}, row {row}",
                        fix="label every row, or drop unlabelled rows from the source")
    return str(raw)
