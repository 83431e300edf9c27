"""Multiple choice: a question, lettered choices, the letter of the right one (tau/commonsense_qa).

Scoring compares the likelihood of each choice's letter as the whole answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from multitune.config.schema import MultipleChoiceTask
from multitune.errors import UserError
from multitune.tasks.base import Example, chat, check_template, require_columns, text_cell

DEFAULT_SYSTEM = "Answer the multiple-choice question with the letter of the correct choice only."
DEFAULT_TEMPLATE = "{question}\n\n{choices}"
FIELDS = ("question", "choices")


def examples(cfg: MultipleChoiceTask, rows: Any, *, labelled: bool = True, labels: None = None) -> list[Example]:
    """Render rows as examples; `labelled=False` (prediction) reads no answer column."""
    wanted = {"question_column": cfg.question_column, "choices_column": cfg.choices_column}
    require_columns(rows, wanted | ({"answer_column": cfg.answer_column} if labelled else {}), cfg.name)
    template = cfg.prompt_template or DEFAULT_TEMPLATE
    check_template(template, FIELDS, cfg.name)
    system = DEFAULT_SYSTEM if cfg.system_prompt is None else cfg.system_prompt
    out = []
    answers = rows[cfg.answer_column] if labelled else [None] * len(rows)
    columns = (rows[cfg.question_column], rows[cfg.choices_column], answers)
    for i, (question, choices, answer) in enumerate(zip(*columns, strict=True)):
        question = text_cell(question, cfg.question_column, i, cfg.name)
        letters, texts = _choices(choices, i, cfg)
        rendered = "\n".join(f"{letter}. {text}" for letter, text in zip(letters, texts, strict=True))
        user = template.format(question=question, choices=rendered)
        if not labelled:
            out.append(Example(cfg.name, i, chat(system, user, ""), candidates=tuple(letters),
                               choice_texts=tuple(texts)))
            continue
        if answer is None or str(answer).strip() == "":
            raise UserError(
                f"column {cfg.answer_column!r} is empty: this row has no answer (the Hub's test split of "
                "commonsense_qa is unlabelled)",
                where=f"task {cfg.name}, row {i}",
                fix=f"train and evaluate on a labelled split (tasks.{cfg.name}.split=train or validation)",
            )
        answer = str(answer).strip()
        if answer not in letters:
            raise UserError(f"answer {answer!r} is not one of the choices {letters}",
                            where=f"task {cfg.name}, row {i}")
        out.append(Example(cfg.name, i, chat(system, user, answer), label=answer, candidates=tuple(letters),
                           choice_texts=tuple(texts)))
    return out


def _choices(cell: Any, row: int, cfg: MultipleChoiceTask) -> tuple[list[str], list[str]]:
    if not isinstance(cell, Mapping) or "label" not in cell or "text" not in cell:
        raise UserError(
            f"column {cfg.choices_column!r} should be a mapping {{label: [...], text: [...]}}, got {cell!r:.60}",
            where=f"task {cfg.name}, row {row}",
        )
    letters = [str(x).strip() for x in cell["label"]]
    texts = [text_cell(x, cfg.choices_column, row, cfg.name) for x in cell["text"]]
    if len(letters) != len(texts) or len(letters) < 2 or len(set(letters)) != len(letters):
        raise UserError(f"choices need at least 2 distinct labels, each with a text; got {letters}",
                        where=f"task {cfg.name}, row {row}")
    return letters, texts
