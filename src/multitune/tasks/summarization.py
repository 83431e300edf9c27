"""Summarisation: a source text and its reference summary (DialogSum: `dialogue` / `summary`).

The summary is the trained answer; evaluation generates and compares with the reference.
"""

from __future__ import annotations

from typing import Any, Literal

from multitune.tasks.base import (
    EmptyPolicy,
    Example,
    OpenKind,
    Rendered,
    chat,
    check_template,
    column,
    render_rows,
    require_columns,
    system_prompt,
    text_cell,
)
from multitune.tasks.config import TaskBase

DEFAULT_SYSTEM = "Summarize the text the user gives in a few sentences. Reply with the summary only."
DEFAULT_TEMPLATE = "{source}"
FIELDS = ("source",)


class SummarizationTask(TaskBase):
    """Template field: `{source}`."""

    kind: Literal["summarization"]
    source_column: str = "text"
    """The text to summarise (DialogSum: `dialogue`)."""
    target_column: str = "summary"
    """The reference summary, trained as the answer."""


def render(
    cfg: SummarizationTask, rows: Any, *, labelled: bool = True, labels: None = None, empty: EmptyPolicy = "error",
) -> Rendered:
    """Render rows as examples; `labelled=False` (prediction) reads no target column."""
    wanted = {"source_column": cfg.source_column} | ({"target_column": cfg.target_column} if labelled else {})
    require_columns(rows, wanted, cfg.name)
    template = cfg.prompt_template or DEFAULT_TEMPLATE
    check_template(template, FIELDS, cfg.name)
    system = system_prompt(cfg, DEFAULT_SYSTEM)
    sources = column(rows, cfg.source_column)
    targets = column(rows, cfg.target_column) if labelled else [None] * len(sources)

    def make(i: int) -> Example:
        source = text_cell(sources[i], cfg.source_column, i, cfg.name, required=labelled)
        target = text_cell(targets[i], cfg.target_column, i, cfg.name) if labelled else ""
        return Example(cfg.name, i, chat(system, template.format(source=source), target))

    return render_rows(len(sources), make, cfg.name, empty, unlabelled_fix="")


class Summarization(OpenKind):
    """The `summarization` kind (`multitune.tasks.base.TaskKind`)."""

    name = card_name = "summarization"
    config = SummarizationTask
    hub_task = "summarization"
    default_system = DEFAULT_SYSTEM
    render = staticmethod(render)
