"""A small whole run, then `multitune eval` on it: files, reproducibility, scikit-learn agreement."""

import json
from pathlib import Path

import pytest
from sklearn.metrics import accuracy_score, f1_score

from conftest import SMALL_TINY
from multitune.cli import main
from multitune.config import validate
from multitune.io import read_jsonl
from multitune.recipes.train import run
from multitune.report.results import load_summary


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evalrun") / "run"
    run(validate({
        "output_dir": str(out),
        "model": {"name": "tiny", "tiny": SMALL_TINY},
        "tasks": [
            {"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 64},
            {"name": "quiz", "kind": "multiple_choice", "source": "demo:quiz", "max_rows": 40},
            {"name": "instruct", "kind": "instruction", "source": "demo:instruct", "max_rows": 30},
        ],
        "train": {"max_steps": 4, "micro_batch_size": 4},
        "eval": {"every_steps": 2, "best_metric": "claims/loss", "max_new_tokens": 4, "generate_max_rows": 4},
        "logging": {"every_steps": 1},
    }))
    return out


def test_a_run_writes_metrics_predictions_plots_and_report(trained):
    raw = json.loads((trained / "eval" / "metrics.json").read_text())
    assert raw["format"] == 2 and raw["final_step"] == 4 and raw["model"] == "trained"
    assert raw["primary"] == {"claims": "accuracy", "quiz": "accuracy", "instruct": "rougeL"}
    assert raw["best"]["metric"] == "claims/loss" and raw["best"]["step"] in (2, 4)
    assert raw["best"]["higher_is_better"] is False
    assert set(raw["before"]) == set(raw["after"]) == {"claims", "quiz", "instruct"}
    assert {"rouge1", "bleu", "chrf", "perplexity"} <= raw["after"]["instruct"].keys()
    assert raw["after"]["claims"]["gen_rows"] == 4.0
    rows = read_jsonl(trained / "metrics.jsonl")
    assert [r["step"] for r in rows if "eval/claims/loss" in r] == [0, 2, 4]
    assert [r["step"] for r in rows if "eval/best_metric" in r] == [2, 4]  # the baseline is no candidate
    assert "eval/claims/gen_accuracy" in rows[0] and not any("eval/claims/gen_accuracy" in r for r in rows[1:-1])
    for name in ("loss.png", "metrics.png", "confusion_claims.png"):
        assert (trained / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (trained / "report.html").is_file()
    details = json.loads((trained / "eval" / "claims" / "details.json").read_text())
    assert details["labels"] == ["Claim", "Not a Claim"] and len(details["confusion"]) == 2


def test_eval_reproduces_the_run_and_equals_sklearn_on_its_predictions(trained, capsys):
    before = load_summary(trained)
    assert main(["eval", str(trained)]) == 0
    printed = capsys.readouterr().out
    assert "claims    accuracy" in printed and "metrics: " in printed
    again = load_summary(trained)
    assert again.best == before.best and again.final_step == 4  # training-time facts are kept
    for task, metrics in before.after.items():
        for name, value in metrics.items():
            assert again.after[task][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (task, name)
    preds = read_jsonl(trained / "eval" / "claims" / "predictions.jsonl")
    gold, pred = [p["gold"] for p in preds], [p["prediction"] for p in preds]
    assert {"row", "input", "gold", "prediction", "score", "correct"} <= preds[0].keys()
    assert again.after["claims"]["accuracy"] == accuracy_score(gold, pred)
    assert again.after["claims"]["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro"))
    assert again.after["claims"]["weighted_f1"] == pytest.approx(f1_score(gold, pred, average="weighted"))


def test_eval_of_the_base_model_alone_equals_the_runs_baseline(trained, tmp_path):
    assert main(["eval", str(trained), "--model", "base", "--output-dir", str(tmp_path / "base")]) == 0
    base = load_summary(tmp_path, "base")
    assert base.model == "base" and base.before is None
    baseline = load_summary(trained).before
    for task in ("claims", "quiz", "instruct"):
        assert base.after[task]["loss"] == pytest.approx(baseline[task]["loss"], rel=1e-5)
    assert base.after["claims"]["accuracy"] == baseline["claims"]["accuracy"]


def test_eval_on_every_row_of_a_task_source(trained, tmp_path):
    out = tmp_path / "all"
    args = ["eval", str(trained), "--rows", "all", "--output-dir", str(out), "tasks.claims.max_rows=21",
            "eval.baseline=false", "eval.generate=never"]
    assert main(args) == 0
    summary = load_summary(tmp_path, "all")
    assert summary.after["claims"]["rows"] == 21.0 and summary.before is None and summary.best is None
    assert len(read_jsonl(out / "claims" / "predictions.jsonl")) == 21
    assert "gen_accuracy" not in summary.after["claims"]


def test_eval_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "holds no config.yaml" in capsys.readouterr().err
