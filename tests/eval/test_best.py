"""eval.best_metric: validated against the run's tasks, and its value in an evaluation."""

import math

import pytest

from multitune.best import best_metric_value, improves, update_best
from multitune.config import validate
from multitune.errors import UserError
from multitune.kinds import metric_names, primary_metrics

TASKS = [
    {"name": "banking77", "kind": "classification", "source": "demo:intents"},
    {"name": "quiz", "kind": "multiple_choice", "source": "demo:quiz"},
    {"name": "instruct", "kind": "instruction", "source": "demo:instruct"},
]


def cfg(**eval_section):
    return validate({"tasks": TASKS, "eval": eval_section})


@pytest.mark.parametrize("name", ["banking77/macro_f1", "quiz/accuracy", "instruct/perplexity", "loss"])
def test_metrics_computed_at_every_evaluation_are_accepted(name):
    assert cfg(best_metric=name).eval.best_metric == name


def test_generated_metrics_need_generation_at_every_evaluation():
    with pytest.raises(UserError, match=r"no metric 'rougeL' at every evaluation \(computed only with "
                                        r"eval.generate=always\)"):
        cfg(best_metric="instruct/rougeL")
    assert cfg(best_metric="instruct/rougeL", generate="always").eval.best_metric == "instruct/rougeL"
    with pytest.raises(UserError, match="that of task 'instruct' \\(instruction\\) is rougeL"):
        cfg(best_metric="mean")
    assert cfg(best_metric="mean", generate="always").eval.best_metric == "mean"


@pytest.mark.parametrize(("name", "message"), [
    ("bankin77/accuracy", "no task 'bankin77' (did you mean 'banking77'?)"),
    ("quiz/macro_f1", "choose one of loss, accuracy"),
    ("accuracy", "'accuracy' is not `mean`, `loss` or `<task>/<metric>`"),
])
def test_bad_best_metric_names_say_what_to_write(name, message):
    with pytest.raises(UserError) as e:
        cfg(best_metric=name)
    assert message in str(e.value) and "eval.best_metric" in str(e.value)


def test_best_metric_value_and_direction():
    results = {"banking77": {"accuracy": 0.8, "macro_f1": 0.7, "loss": 0.5},
               "quiz": {"accuracy": 0.4, "loss": 1.5}, "instruct": {"rougeL": 0.3, "loss": 2.5}}
    primary = primary_metrics([(t["name"], t["kind"]) for t in TASKS])
    assert primary == {"banking77": "accuracy", "quiz": "accuracy", "instruct": "rougeL"}
    assert best_metric_value(results, "mean", primary) == (pytest.approx(0.5), True)
    assert best_metric_value(results, "banking77/macro_f1", primary) == (0.7, True)
    assert best_metric_value(results, "loss", primary) == (pytest.approx(1.5), False)
    assert best_metric_value(results, "quiz/loss", primary) == (1.5, False)


def test_improves_and_update_best():
    assert improves(0.5, None, True) and improves(0.4, 0.5, False) and not improves(0.5, 0.5, True)
    assert not improves(math.nan, 0.1, True) and improves(0.1, math.nan, True)
    best = None
    for step, acc in [(10, 0.5), (20, 0.7), (30, 0.6)]:
        best = update_best(best, "t/accuracy", {"t": {"accuracy": acc}}, {}, step)
    assert best == {"metric": "t/accuracy", "higher_is_better": True, "step": 20, "value": 0.7}


def test_metric_names_of_new_generation_kinds():
    assert metric_names("chat", generated=True) == ["loss", "perplexity", "rouge1", "rouge2", "rougeL", "bleu", "chrf"]
    assert metric_names("multiple_choice", generated=False, choice_texts=True) == [
        "loss", "accuracy", "choice_acc", "choice_acc_norm"]
