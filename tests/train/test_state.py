"""The train state: every change to it is one of its methods (so exact resume can be read from one file),
each pinned here, and a checkpoint's state.json reads back field for field."""

from __future__ import annotations

import ast
import math
from dataclasses import fields
from pathlib import Path

import pytest
import torch

import multitune
from multitune.train.state import StepResult, TrainState

PACKAGE = Path(multitune.__file__).parent
FIELDS = {f.name for f in fields(TrainState)}


def step(loss: float, tokens: int, task_sums: list[list[float]]) -> StepResult:
    return StepResult(loss=loss, grad_norm=1.0, answer_tokens=0, tokens=tokens,
                      task_sums=torch.tensor(task_sums, dtype=torch.float64))


def test_steps_add_to_the_counts_and_the_interval_sums_and_a_bad_step_adds_only_to_the_counts():
    state = TrainState()
    state.start_interval(2)
    state.record_step(step(1.0, 10, [[3.0, 2.0], [1.0, 1.0]]), seconds=0.5)
    state.record_step(step(math.nan, 7, [[math.nan, 4.0], [0.0, 0.0]]), seconds=0.25)
    assert (state.step, state.tokens_seen, state.train_seconds) == (2, 17, 0.75)
    assert (state.bad_steps, state.consecutive_bad_steps) == (1, 1)
    assert state.interval_task_sums == [[3.0, 2.0], [1.0, 1.0]]
    assert (state.interval_tokens, state.interval_steps) == (10, 1)
    state.record_step(step(2.0, 5, [[2.0, 1.0], [0.0, 0.0]]), seconds=0.25)
    assert (state.bad_steps, state.consecutive_bad_steps) == (1, 0)


def test_closing_an_interval_gives_its_row_per_answer_token_and_zeroes_it():
    state = TrainState()
    state.start_interval(2)
    state.record_step(step(1.0, 10, [[3.0, 2.0], [1.0, 2.0]]), seconds=0.5)
    row = state.close_interval(["a", "b"], started=0.0)
    assert {k: v for k, v in row.items() if k != "tokens_per_s"} == \
        {"train/loss": 1.0, "train/a/loss": 1.5, "train/b/loss": 0.5}
    assert state.interval_task_sums == [[0.0, 0.0], [0.0, 0.0]]
    assert (state.interval_tokens, state.interval_steps) == (0, 0)
    assert math.isnan(state.close_interval(["a", "b"], started=0.0)["train/loss"])  # no step: no loss


def test_a_resumed_state_keeps_the_interval_its_checkpoint_was_taken_in():
    state = TrainState(interval_task_sums=[[4.0, 2.0]], interval_tokens=9, interval_steps=1)
    state.start_interval(1)
    assert (state.interval_task_sums, state.interval_tokens, state.interval_steps) == ([[4.0, 2.0]], 9, 1)


def test_evaluations_checkpoints_and_accounting_change_only_their_fields():
    state = TrainState(peak_memory_bytes=100.0)
    state.record_baseline({"a": {"accuracy": 0.5}}, None)
    state.record_eval(3, {"metric": "a/accuracy", "higher_is_better": True, "step": 3, "value": 0.75})
    state.attach_tracker("run-1")
    state.mark_checkpoint(7)
    state.account(12.5, 50.0)  # a session whose peak is below an earlier session's keeps the earlier
    assert state.to_dict() == {
        **TrainState().to_dict(), "baseline": {"a": {"accuracy": 0.5}}, "last_eval_step": 3,
        "best": {"metric": "a/accuracy", "higher_is_better": True, "step": 3, "value": 0.75},
        "tracker_run_id": "run-1", "metrics_rows": 7, "wall_seconds": 12.5, "peak_memory_bytes": 100.0}


def test_a_state_json_written_before_the_methods_reads_back_the_same():
    """state.json is the dataclass's fields: a checkpoint written by any version with these fields resumes."""
    old = {"step": 4, "tokens_seen": 900, "bad_steps": 1, "consecutive_bad_steps": 0,
           "best": {"metric": "claims/loss", "higher_is_better": False, "step": 4, "value": 0.25},
           "baseline": None, "shots": None, "tracker_run_id": None, "metrics_rows": 5, "last_eval_step": 4,
           "train_seconds": 1.5, "wall_seconds": 3.0, "peak_memory_bytes": 1e9,
           "interval_task_sums": [[1.0, 2.0]], "interval_tokens": 40, "interval_steps": 2}
    assert set(old) == FIELDS - {"eval_seconds"}  # a checkpoint from before evaluation time was counted
    assert TrainState.from_dict(old).to_dict() == {**old, "eval_seconds": 0.0}


def assigned_state_fields(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, field) of each `<...>state.<field> = / += ...` (and `del`), for a field of TrainState."""
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else \
            [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else []
        for target in targets:
            while isinstance(target, ast.Subscript):  # state.interval_task_sums[0] = ...
                target = target.value
            if isinstance(target, ast.Attribute) and target.attr in FIELDS:
                owner = target.value
                if (isinstance(owner, ast.Name) and owner.id == "state") or \
                        (isinstance(owner, ast.Attribute) and owner.attr == "state"):
                    found.append((node.lineno, target.attr))
    return found


def test_the_state_is_changed_in_its_own_file_only():
    assigned = {f"{path.relative_to(PACKAGE)}:{line} ({name})"
                for path in PACKAGE.rglob("*.py") if path != PACKAGE / "train" / "state.py"
                for line, name in assigned_state_fields(ast.parse(path.read_text()))}
    assert not assigned, "change a TrainState through its methods (train/state.py), not by assigning a field"


@pytest.mark.parametrize("code", ["state.step += 1", "r.state.best = None", "state.interval_task_sums[0] = []"])
def test_the_check_sees_an_assignment(code):
    assert assigned_state_fields(ast.parse(code))


def test_the_train_recipe_prints_through_print0_only():
    tree = ast.parse((PACKAGE / "recipes" / "train.py").read_text())
    calls = [node.func for node in ast.walk(tree) if isinstance(node, ast.Call)]
    bare = [f.lineno for f in calls if isinstance(f, ast.Name) and f.id == "print"]
    per_node = [f.lineno for f in calls if isinstance(f, ast.Attribute) and f.attr == "print"]
    assert (bare, per_node) == ([], [])
