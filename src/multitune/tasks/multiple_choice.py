"""Multiple choice: a question, lettered choices, the letter of the right one (tau/commonsense_qa), or its
text with `answer_format: text`.

Scoring compares the likelihood of each candidate (each choice's letter, or its text) as the whole answer. The Hub's test split of
commonsense_qa has `answerKey == ""`: such rows are refused for training and evaluation, never read as a
label.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from multitune.errors import UserError
from multitune.tasks.answers import parse_choice, parse_label
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
    system_prompt,
    text_cell,
)
from multitune.tasks.config import TaskBase

DEFAULT_SYSTEM = "Answer the multiple-choice question with the letter of the correct choice only."
DEFAULT_SYSTEM_TEXT = "Answer the multiple-choice question with the text of the correct choice only."
DEFAULT_TEMPLATE = "{question}\n\n{choices}"
FIELDS = ("question", "choices")


class MultipleChoiceTask(TaskBase):
    """Template fields: `{question}`, `{choices}` (one `A. text` line per choice)."""

    kind: Literal["multiple_choice"]
    question_column: str = "question"
    choices_column: str = "choices"
    """A `{label: [...], text: [...]}` mapping per row (the Hub layout of tau/commonsense_qa)."""
    answer_column: str = "answerKey"
    answer_format: Literal["letter", "text"] = "letter"
    """What the model answers: `letter`, the correct choice's letter (scoring compares the letters), or
    `text`, the correct choice's text (scoring compares the row's choice texts as whole answers; a row's
    repeated text counts as its first occurrence). The prompt lists the lettered choices either way. A
    small model may be unable to tie letters to choices (SmolLM2-135M stays at chance on commonsense_qa
    letters) yet learn to rank the texts: see docs/history.md."""


def default_system(cfg: MultipleChoiceTask) -> str:
    """The system prompt for the answer format: letters, or the choices' texts."""
    return DEFAULT_SYSTEM_TEXT if cfg.answer_format == "text" else DEFAULT_SYSTEM


def render(
    cfg: MultipleChoiceTask, rows: Any, *, labelled: bool = True, labels: None = None, empty: EmptyPolicy = "error",
) -> Rendered:
    """Render rows as examples; `labelled=False` (prediction) reads no answer column."""
    wanted = {"question_column": cfg.question_column, "choices_column": cfg.choices_column}
    require_columns(rows, wanted | ({"answer_column": cfg.answer_column} if labelled else {}), cfg.name)
    template = cfg.prompt_template or DEFAULT_TEMPLATE
    check_template(template, FIELDS, cfg.name)
    system = system_prompt(cfg, default_system(cfg))
    questions = column(rows, cfg.question_column)
    choices = column(rows, cfg.choices_column)
    answers = column(rows, cfg.answer_column) if labelled else [None] * len(questions)

    def make(i: int) -> Example:
        question = text_cell(questions[i], cfg.question_column, i, cfg.name, required=labelled)
        letters, texts = _choices(choices[i], i, cfg)
        rendered = "\n".join(f"{letter}. {text}" for letter, text in zip(letters, texts, strict=True))
        user = template.format(question=question, choices=rendered)
        candidates = tuple(texts) if cfg.answer_format == "text" else tuple(letters)
        if not labelled:
            return Example(cfg.name, i, chat(system, user, ""), candidates=candidates, choice_texts=tuple(texts))
        answer = answers[i]
        if answer is None or str(answer).strip() == "":
            raise MissingAnswer(cfg.answer_column, i, cfg.name)
        answer = str(answer).strip()
        if answer not in letters:
            raise UserError(f"answer {answer!r} is not one of the choices {letters}",
                            where=f"task {cfg.name}, row {i}", fix="fix the row's answer or its choices")
        letter = answer
        if cfg.answer_format == "text":
            answer = texts[letters.index(letter)]
        return Example(cfg.name, i, chat(system, user, answer), label=answer, candidates=candidates,
                       choice_texts=tuple(texts), stratum=letter if answer != letter else None)

    return render_rows(
        len(questions), make, cfg.name, empty,
        unlabelled_fix=f"train and evaluate on a labelled split (the Hub's test split of commonsense_qa has no "
                       f"answers): set tasks.{cfg.name}.split / val_split to train or validation",
    )


class MultipleChoice:
    """The `multiple_choice` kind (`multitune.tasks.base.TaskKind`)."""

    name = "multiple_choice"
    config = MultipleChoiceTask
    closed, labels, choice_texts = True, False, True
    scored_metrics = ("loss", "accuracy")
    primary_metric = "accuracy"
    hub_task = "multiple-choice"
    card_name = "multiple choice"
    card_limits = ""

    def system_prompt(self, cfg: MultipleChoiceTask) -> str | None:
        return system_prompt(cfg, default_system(cfg))

    render = staticmethod(render)

    def read_answer(self, text: str, example: Example) -> str | None:
        # Answered with the choices' texts (answer_format: text), a generated answer is read like a label.
        if example.candidates == example.choice_texts:
            return parse_label(text, example.candidates or ())
        return parse_choice(text, example.candidates or ())


def _choices(cell: Any, row: int, cfg: MultipleChoiceTask) -> tuple[list[str], list[str]]:
    if not isinstance(cell, Mapping) or "label" not in cell or "text" not in cell:
        raise UserError(
            f"column {cfg.choices_column!r} should be a mapping {{label: [...], text: [...]}}, got {cell!r:.60}",
            where=f"task {cfg.name}, row {row}",
            fix=f"point tasks.{cfg.name}.choices_column at a column in the Hub layout of tau/commonsense_qa",
        )
    letters = [str(x).strip() for x in cell["label"] or []]
    texts = [text_cell(x, cfg.choices_column, row, cfg.name) for x in cell["text"] or []]
    if len(letters) != len(texts) or len(letters) < 2 or len(set(letters)) != len(letters):
        raise UserError(f"choices need at least 2 distinct labels, each with a text; got {letters}",
                        where=f"task {cfg.name}, row {row}")
    return letters, texts
