"""Whole tiny runs with an evaluated-only task and the k-shot baseline: the retention task changes no
weight, is scored before and after, and shows under "retention" in the table, the report and the card."""

import json

import pytest
from safetensors.torch import load_file

from conftest import SMALL_TINY
from multitune.config import validate
from multitune.recipes.train import run

CLAIMS = {"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 64}
QUIZ = {"name": "quiz", "kind": "multiple_choice", "source": "demo:quiz", "max_rows": 30}


def config(out, tasks, **eval_keys):
    return validate({
        "output_dir": str(out), "model": {"name": "tiny", "tiny": SMALL_TINY}, "tasks": tasks,
        "train": {"max_steps": 3, "micro_batch_size": 4}, "logging": {"every_steps": 1},
        "eval": {"baseline": False, "generate": "never", **eval_keys},
    })


def test_an_evaluated_only_task_changes_no_weight(tmp_path):
    alone = run(config(tmp_path / "alone", [CLAIMS]))
    with_quiz = run(config(tmp_path / "quiz", [CLAIMS, {**QUIZ, "train": False}]))
    a = load_file(tmp_path / "alone" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "quiz" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # the same steps, bit for bit
    rows = [json.loads(x) for x in (tmp_path / "quiz" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/loss"] for r in rows if "train/loss" in r] == \
        [r["train/loss"] for r in map(json.loads, (tmp_path / "alone" / "metrics.jsonl").read_text().splitlines())
         if "train/loss" in r]
    assert not any("train/quiz/loss" in r for r in rows) and any("eval/quiz/accuracy" in r for r in rows)
    assert with_quiz.metrics["retention"] == ["quiz"] and alone.metrics["retention"] == []
    assert with_quiz.metrics["after"]["claims"] == pytest.approx(alone.metrics["after"]["claims"])


def test_retention_and_k_shot_figures_reach_the_table_the_report_and_the_card(tmp_path, capsys):
    out = tmp_path / "run"
    result = run(config(out, [CLAIMS, {**QUIZ, "train": False}], baseline=True, baseline_shots=2,
                        baseline_max_rows=6))
    metrics = result.metrics
    assert metrics["baseline_shots"] == 2 and set(metrics["shots"]) == {"claims", "quiz"}
    assert metrics["before"]["quiz"]["rows"] == metrics["shots"]["quiz"]["rows"] == 6.0  # the baseline's rows
    assert metrics["after"]["quiz"]["rows"] == 6.0 and metrics["shots"]["claims"]["truncated"] == 0.0
    printed = capsys.readouterr().out
    table = printed[printed.index("\ntask ") + 1:]
    assert table.splitlines()[0].split() == ["task", "metric", "zero-shot", "2-shot", "after", "change"]
    retention = table.index("retention (evaluated, never trained")
    assert table.index("claims") < retention < table.index("quiz")
    assert "2-shot: the untrained model with 2 training examples of the task as earlier chat turns" in table
    page = (out / "report.html").read_text()
    assert "Retention: evaluated, never trained" in page and "<th>2-shot</th>" in page
    assert (out / "plots" / "task_claims.png").is_file() and (out / "plots" / "task_quiz.png").is_file()
    card = (out / "README.md").read_text()
    assert "on 1 task at once: `claims` (classification). Also evaluated before and after, never trained" in card
    assert "### Retention: tasks evaluated, never trained" in card and "### Trade-off measured" in card
    assert "- `quiz` (retention, never trained): accuracy" in card
    # `multitune eval` re-evaluates the run: the retention task stays one, the k-shot figures stay.
    from multitune.cli import main

    assert main(["eval", str(out)]) == 0
    again = json.loads((out / "eval" / "metrics.json").read_text())
    assert again["retention"] == ["quiz"] and again["shots"] == metrics["shots"] and again["baseline_shots"] == 2
    assert "retention (evaluated, never trained" in capsys.readouterr().out
