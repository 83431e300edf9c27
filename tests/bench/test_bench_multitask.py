"""bench/quality/multitask.py (issue 26): every cell is a valid run of the shipped config, a finished cell is
not run again, and the table reads zero-shot | k-shot | single-task | joint plus the retention rows."""

from __future__ import annotations

import json

from bench.quality import multitask as bench_multitask
from conftest import REPO
from multitune import config
from multitune.config.load import read_yaml
from multitune.io import write_json_atomic

SHIPPED = REPO / "configs" / "smollm2-multitask.yaml"
TASKS = {"banking77": "accuracy", "commonsense_qa": "accuracy", "dialogsum": "rougeL"}


def test_each_cell_is_the_shipped_config_with_the_other_tasks_evaluated_only():
    raw = read_yaml(SHIPPED)
    made = bench_multitask.cells(raw)
    assert list(made) == ["joint", *(f"single-{t}" for t in TASKS)]
    assert made["joint"] == []
    for name in TASKS:
        cfg = config.load(SHIPPED, made[f"single-{name}"])
        assert {t.name: t.train for t in cfg.tasks} == {t: t == name for t in TASKS}
        assert not cfg.eval.baseline and cfg.eval.baseline_shots == 0
        assert cfg.train == config.load(SHIPPED).train  # the joint run's training settings
    assert config.load(SHIPPED).eval.baseline_shots > 0  # the joint run measures k-shot prompting


def test_a_finished_cell_is_not_run_again(tmp_path, monkeypatch):
    (tmp_path / "joint").mkdir()
    (tmp_path / "joint" / "bench.json").write_text(json.dumps({"command": "c", "minutes": 3.0}))
    monkeypatch.setattr(bench_multitask.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    assert bench_multitask.run_cell("joint", "x.yaml", [], tmp_path)["minutes"] == 3.0


def fake(work, cell, after, before=None, shots=None):
    write_json_atomic(work / cell / "eval" / "metrics.json", {
        "primary": TASKS, "before": before, "after": after, "shots": shots, "baseline_shots": 3 if shots else 0})


def test_the_table_and_the_targets(tmp_path):
    row = {"banking77": 0.9, "commonsense_qa": 0.3, "dialogsum": 0.3}
    zero = {"banking77": 0.23, "commonsense_qa": 0.22, "dialogsum": 0.15}
    shot = {"banking77": 0.4, "commonsense_qa": 0.21, "dialogsum": 0.18}

    def m(values, **extra):
        return {t: {TASKS[t]: v, "rows": 200.0, **extra} for t, v in values.items()}

    fake(tmp_path, "joint", m(row), m(zero), m(shot, truncated=0.0))
    for t in TASKS:
        fake(tmp_path, f"single-{t}", m({u: (row[u] + 0.01 if u == t else zero[u] - 0.02) for u in TASKS}))
    records = {c: {"command": f"multitune train {c}", "minutes": 40.0, "load_before": 0.1, "load_after": 2.0}
               for c in ("joint", *(f"single-{t}" for t in TASKS))}
    text = bench_multitask.table(tmp_path, records)
    assert "| commonsense_qa | accuracy | 0.2200 | 0.2100 | 0.3100 | 0.3000 | -0.0100 |" in text
    assert "| single-task banking77 | **0.9100** | 0.2000 | 0.1300 |" in text
    assert "| none (zero-shot) | 0.2300 | 0.2200 | 0.1500 |" in text
    assert "- commonsense_qa: joint within 0.02 of single-task: met (-0.0100)" in text
    assert "- commonsense_qa: joint at least 0.05 above zero-shot and k-shot: met (0.3000 against 0.2200)" in text
    assert "- dialogsum: joint at least 0.05 above zero-shot and k-shot: met (0.3000 against 0.1800)" in text
    assert "- banking77 accuracy >= 0.85: met (0.9000)" in text and "- joint run <= 45 minutes: met" in text
