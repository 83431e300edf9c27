"""Evaluated-only tasks (`tasks[].train: false`): refused settings, and no share of the mixture or of the
training examples, while their validation rows are those a trained task would have."""

import pytest
from data_helpers import run_config

from multitune.data.mixture import mixture_order
from multitune.data.prepare import load_splits, tokenize_splits, training_conversations
from multitune.data.stats import data_summary
from multitune.errors import UserError

CLAIMS = {"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 40}
QUIZ = {"name": "quiz", "kind": "multiple_choice", "source": "demo:quiz", "max_rows": 30}


def test_a_retention_task_refuses_mixture_settings_and_one_task_must_train():
    with pytest.raises(UserError) as e:
        run_config([CLAIMS, {**QUIZ, "train": False, "weight": 2.0}])
    assert "weight and max_examples_per_epoch set a trained task's share" in str(e.value)
    with pytest.raises(UserError, match="every task has train: false"):
        run_config([{**CLAIMS, "train": False}])
    with pytest.raises(UserError, match="eval.baseline_shots is part of the baseline evaluation"):
        run_config([CLAIMS], eval={"baseline": False, "baseline_shots": 2})
    assert run_config([CLAIMS, {**QUIZ, "train": False}]).tasks[1].train is False
    # `mean` averages the trained tasks only: a retention task without the metric at every evaluation is fine.
    summary = {"name": "gen", "kind": "summarization", "source": "demo:instruct", "train": False}
    assert run_config([CLAIMS, summary], eval={"best_metric": "mean"}).eval.best_metric == "mean"
    with pytest.raises(UserError, match="rougeL, computed only with generation"):
        run_config([CLAIMS, {**summary, "train": True}], eval={"best_metric": "mean"})


def test_a_retention_task_has_no_training_example_and_no_share_but_the_same_validation_rows(tokenizer):
    both = run_config([CLAIMS, {**QUIZ, "train": False}], data={"mixture": {"strategy": "equal"}})
    trained = run_config([CLAIMS, QUIZ], data={"mixture": {"strategy": "equal"}})
    prepared = tokenize_splits(tokenizer, load_splits(both), both)
    assert prepared.retention == ["quiz"]
    assert prepared.task_sizes[1] == 0 and prepared.epoch_counts[1] == 0  # even under `equal`
    assert {ex.task_id for ex in prepared.train} == {0}
    assert all(i < prepared.task_sizes[0] for i in mixture_order(prepared.task_sizes, prepared.epoch_counts, 0, 0))
    assert prepared.stats["quiz"]["epoch"]["share"] == 0.0 and prepared.stats["quiz"]["trained"] is False
    # Scored on exactly the rows it would be scored on were it trained.
    other = tokenize_splits(tokenizer, load_splits(trained), trained)
    assert [t.input_ids for t in prepared.val["quiz"]] == [t.input_ids for t in other.val["quiz"]]
    assert len(prepared.val["quiz"]) == 6
    assert "evaluated only (train: false): never trained" in data_summary(prepared, 0)


def test_the_tiny_model_is_built_from_trained_tasks_only():
    cfg = run_config([CLAIMS, {**QUIZ, "train": False}])
    splits = load_splits(cfg)
    assert training_conversations(splits) == [ex.messages for ex in splits[0].train]
