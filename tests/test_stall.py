"""The warning for a trained task whose metric stays at its zero-shot value while its loss falls."""

from multitune.stall import margin, run_warnings, stall_warning

ZERO = {"accuracy": 0.225, "loss": 5.82, "rows": 200.0}


def test_a_task_stuck_at_zero_shot_while_its_loss_falls_is_warned_about():
    stuck = {"accuracy": 0.215, "loss": 0.81, "rows": 200.0}
    text = stall_warning("csqa", "multiple_choice", ZERO, stuck)
    assert text.startswith("csqa: accuracy 0.2150 is still at its zero-shot value 0.2250")
    assert "validation loss fell from 5.82 to 0.81" in text and "It answers" not in text  # no predictions given
    below_margin = {**stuck, "accuracy": 0.225 + margin("multiple_choice", 0.225, 200) - 0.001}
    assert stall_warning("csqa", "multiple_choice", ZERO, below_margin) is not None


def test_no_warning_when_the_metric_moved_or_the_loss_did_not_fall_or_a_figure_is_missing():
    assert stall_warning("b77", "classification", ZERO, {"accuracy": 0.935, "loss": 0.1, "rows": 200.0}) is None
    assert stall_warning("csqa", "multiple_choice", ZERO, {"accuracy": 0.22, "loss": 4.5, "rows": 200.0}) is None
    assert stall_warning("d", "summarization", {"loss": 3.0}, {"loss": 1.0}) is None  # rougeL not generated
    assert stall_warning("d", "summarization", {"rougeL": 0.150, "loss": 3.0}, {"rougeL": 0.165, "loss": 1.0})
    assert stall_warning("d", "summarization", {"rougeL": 0.150, "loss": 3.0}, {"rougeL": 0.309, "loss": 1.0}) is None


def test_a_collapse_onto_one_answer_is_named_and_only_trained_tasks_are_checked():
    records = [{"prediction": "C" if i % 25 else "A", "gold": "ABCDE"[i % 5]} for i in range(200)]
    now = {"csqa": {"accuracy": 0.2, "loss": 0.8, "rows": 200.0}, "kept": {"accuracy": 0.2, "loss": 0.8}}
    before = {"csqa": ZERO, "kept": ZERO}
    (warning,) = run_warnings({"csqa": "multiple_choice"}, before, now, {"csqa": records})
    assert "It answers 'C' to 96% of the rows (20% of the gold answers)." in warning
    assert run_warnings({"csqa": "multiple_choice"}, None, now, {}) == []  # no baseline, nothing to compare
