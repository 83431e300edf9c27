import json

import pytest

from multitune.config import validate
from multitune.tracking import JsonlTracker, make_trackers

TASKS = [{"name": "claims", "kind": "classification", "source": "demo:claims"}]


def test_jsonl_rows_are_valid_json_even_with_non_finite_values(tmp_path):
    t = JsonlTracker(tmp_path / "m.jsonl")
    t.log({"loss": float("nan"), "lr": 0.1}, step=3)
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"step": 3, "loss": None, "lr": 0.1}


def test_no_wandb_no_wandb_import(tmp_path, monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    trackers = make_trackers(validate({"output_dir": str(tmp_path), "tasks": TASKS}), is_main=True)
    trackers.log({"a": 1.0}, step=1)
    assert "wandb" not in sys.modules
    assert len(trackers.trackers) == 1


def test_only_the_main_process_writes(tmp_path):
    trackers = make_trackers(validate({"output_dir": str(tmp_path), "tasks": TASKS}), is_main=False)
    trackers.log({"a": 1.0}, step=1)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_wandb_offline_run_gets_the_resolved_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = validate({"output_dir": str(tmp_path), "tasks": TASKS, "logging": {"wandb": {"mode": "offline"}}})
    trackers = make_trackers(cfg, is_main=True)
    wb = trackers.trackers[1]
    assert wb.run.config["train"]["epochs"] == 2
    trackers.log({"train/loss": 1.5}, step=1)
    trackers.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
