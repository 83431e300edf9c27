"""A task kind is one class in one file plus one registry line: a toy kind, defined here and registered
with `tasks.register`, is configured, trained, scored, generated for and described on the model card
with no other change anywhere."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest

from conftest import SMALL_TINY
from multitune import kinds, tasks
from multitune.config import dump, validate
from multitune.errors import UserError
from multitune.tasks.answers import parse_label
from multitune.tasks.base import (
    EmptyPolicy,
    Example,
    MissingAnswer,
    Rendered,
    chat,
    column,
    render_rows,
    require_columns,
    system_prompt,
    text_cell,
)
from multitune.tasks.config import TaskBase

# --- the toy kind: what would be src/multitune/tasks/yes_no.py -------------------------------------------

DEFAULT_SYSTEM = "Say whether the statement is true. Reply with yes or no only."
ANSWERS = ("yes", "no")


class YesNoTask(TaskBase):
    """Template field: none; the user turn is the statement."""

    kind: Literal["yes_no"]
    statement_column: str = "statement"
    answer_column: str = "answer"


def render_yes_no(cfg: YesNoTask, rows: Any, *, labelled: bool = True, labels: list[str] | None = None,
                  empty: EmptyPolicy = "error") -> Rendered:
    require_columns(rows, {"statement_column": cfg.statement_column}
                    | ({"answer_column": cfg.answer_column} if labelled else {}), cfg.name)
    system = system_prompt(cfg, DEFAULT_SYSTEM)
    statements = column(rows, cfg.statement_column)
    answers = column(rows, cfg.answer_column) if labelled else [None] * len(statements)

    def make(i: int) -> Example:
        statement = text_cell(statements[i], cfg.statement_column, i, cfg.name, required=labelled)
        if not labelled:
            return Example(cfg.name, i, chat(system, statement, ""), candidates=ANSWERS)
        if answers[i] not in ANSWERS:
            raise MissingAnswer(cfg.answer_column, i, cfg.name)
        return Example(cfg.name, i, chat(system, statement, answers[i]), label=answers[i], candidates=ANSWERS)

    return render_rows(len(statements), make, cfg.name, empty, unlabelled_fix="answer every row yes or no")


class YesNo:
    name = "yes_no"
    config = YesNoTask
    closed, labels, choice_texts = True, False, False
    scored_metrics = ("loss", "accuracy")
    primary_metric = "accuracy"
    hub_task = "question-answering"  # not classification's, so the card shows whose it read
    card_name = "yes/no statements"
    card_limits = "answers yes or no; it cannot say that a statement is undecidable."

    def system_prompt(self, cfg: YesNoTask) -> str | None:
        return system_prompt(cfg, DEFAULT_SYSTEM)

    render = staticmethod(render_yes_no)

    def read_answer(self, text: str, example: Example) -> str | None:
        return parse_label(text, ANSWERS)


# --- the tests ----------------------------------------------------------------------------------------


@pytest.fixture
def yes_no():
    tasks.register(YesNo())  # the one registry line
    yield
    tasks.unregister("yes_no")


def statements(path, n=48):
    rows = [{"statement": f"{a} is more than {b}", "answer": "yes" if a > b else "no"}
            for a, b in ((i % 7, (3 * i) % 5) for i in range(n)) if a != b]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def test_a_registered_kind_is_configured_by_its_own_section(yes_no, tmp_path):
    raw = {"tasks": [{"name": "facts", "kind": "yes_no", "source": "x.jsonl", "answer_column": "truth"}]}
    cfg = validate(raw)
    assert type(cfg.tasks[0]) is YesNoTask and cfg.tasks[0].answer_column == "truth"
    assert "statement_column: statement" in dump(cfg)  # the saved config keeps the kind's own fields
    assert validate(json.loads(json.dumps(cfg.model_dump(mode="json")))) == cfg
    raw["tasks"][0]["statment_column"] = "s"
    with pytest.raises(UserError, match=r"tasks\[facts\]\.statment_column: unknown key \(did you mean "
                                        r"'statement_column'\?\)"):
        validate(raw)
    # The metrics the config admits for eval.best_metric are the kind's.
    assert kinds.metric_names("yes_no", generated=False) == ["loss", "accuracy"]
    task = {"name": "facts", "kind": "yes_no", "source": "x.jsonl"}
    assert validate({"tasks": [task], "eval": {"best_metric": "mean"}}).eval.best_metric == "mean"
    with pytest.raises(UserError, match="gen_accuracy"):
        validate({"tasks": [task], "eval": {"best_metric": "facts/gen_accuracy"}})


def test_an_unregistered_kind_is_refused_with_the_kinds_there_are(yes_no):
    raw = {"tasks": [{"name": "facts", "kind": "yes_or_no", "source": "x.jsonl"}]}
    with pytest.raises(UserError) as e:
        validate(raw)
    assert "tasks[facts].kind: unknown task kind 'yes_or_no' (one of 'classification', 'multiple_choice', " \
           "'instruction', 'chat', 'summarization', 'yes_no')" in str(e.value)
    with pytest.raises(UserError, match=r"tasks\[facts\]: missing `kind` \(one of classification, .*, yes_no\)"):
        validate({"tasks": [{"name": "facts", "source": "x.jsonl"}]})


def test_the_registry_refuses_a_kind_it_cannot_use(yes_no):
    with pytest.raises(ValueError, match="already registered"):
        tasks.register(YesNo())

    class NoReader(YesNo):
        name = "no_reader"
        read_answer = None

    with pytest.raises(ValueError, match="no_reader.*config section must set"):
        tasks.register(NoReader())
    NoReader.config = type("NoReaderTask", (YesNoTask,), {"__annotations__": {"kind": Literal["no_reader"]}})
    with pytest.raises(ValueError, match="closed answers but no read_answer"):
        tasks.register(NoReader())
    assert "no_reader" not in tasks.KINDS


def test_a_toy_kind_trains_and_is_scored_and_generated(yes_no, tmp_path):
    from multitune.export.to_gguf import system_prompts
    from multitune.recipes.train import run
    from multitune.report.card import model_card

    rows = statements(tmp_path / "facts.jsonl")
    cfg = validate({
        "output_dir": str(tmp_path / "run"), "model": {"name": "tiny", "tiny": SMALL_TINY},
        "tasks": [{"name": "facts", "kind": "yes_no", "source": str(tmp_path / "facts.jsonl")}],
        "train": {"max_steps": 2, "micro_batch_size": 4},
        "eval": {"baseline": False, "generate": "ends", "generate_max_rows": 3, "max_new_tokens": 4},
    })
    result = run(cfg)

    after = result.metrics["after"]["facts"]
    n_val = after["rows"]
    assert n_val == round(len(rows) * cfg.data.val_fraction)
    assert 0.0 <= after["accuracy"] <= 1.0 and after["loss"] > 0  # scored: every validation row
    assert after["gen_rows"] == 3.0 and 0.0 <= after["gen_invalid_rate"] <= 1.0  # generated: 3 rows
    records = [json.loads(x) for x in (tmp_path / "run" / "eval" / "facts" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == n_val and {r["prediction"] for r in records} <= set(ANSWERS)
    assert sum(r["correct"] for r in records) / n_val == pytest.approx(after["accuracy"])
    generated = [r for r in records if "generated" in r]
    assert len(generated) == 3
    assert all(r["generated_label"] == parse_label(r["generated"], ANSWERS) for r in generated)

    card = model_card(tmp_path / "run")
    assert "`facts` (yes/no statements)" in card
    assert "- `facts` answers yes or no; it cannot say that a statement is undecidable." in card
    assert "type: question-answering" in card
    assert system_prompts(cfg) == [DEFAULT_SYSTEM]


def test_every_kind_exports_the_system_prompt_it_trains_with():
    """The GGUF export's Modelfile takes each task's system prompt from its kind; a multiple-choice task
    answered with its choices' texts trains with its own prompt, not the letters' one."""
    from multitune.data.sources import load_rows
    from multitune.export.to_gguf import system_prompts

    cfg = validate({"tasks": [
        {"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 8},
        {"name": "letters", "kind": "multiple_choice", "source": "demo:quiz", "max_rows": 8},
        {"name": "texts", "kind": "multiple_choice", "source": "demo:quiz", "max_rows": 8, "answer_format": "text"},
        {"name": "instruct", "kind": "instruction", "source": "demo:instruct", "max_rows": 8, "system_prompt": ""},
    ]})
    trained = [tasks.examples(t, load_rows(t))[0].messages[0] for t in cfg.tasks]
    assert system_prompts(cfg) == [m["content"] if m["role"] == "system" else None for m in trained]
    assert system_prompts(cfg)[2] != system_prompts(cfg)[1] and system_prompts(cfg)[3] is None
