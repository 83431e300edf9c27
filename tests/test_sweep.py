"""`multitune sweep` on the quickstart config over two methods: killed (the whole process group, as a lost
machine) during its second run and started again, it skips the finished run, resumes the other from its
checkpoint, and its table is the runs' own eval/metrics.json and run_stats.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from multitune.errors import UserError
from multitune.recipes.sweep import grid, parse_axes, split_values
from multitune.report.results import load_summary

REPO = Path(__file__).resolve().parents[1]
# The quickstart, cut short: 6 steps a run, a checkpoint every 2, a small evaluation.
SHORT = ["train.max_steps=6", "checkpoint.every_steps=2", "eval.max_rows=8", "eval.generate=never", "eval.baseline=false",
         "tasks.claims.max_rows=40", "tasks.intents.max_rows=40", "tasks.quiz.max_rows=30", "tasks.instruct.max_rows=20"]


def sweep_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "multitune", "sweep", str(REPO / "configs" / "quickstart.yaml"),
            "adapter.method=lora,ia3", *SHORT, "--output-dir", str(out)]


def test_a_killed_sweep_resumes_and_its_table_is_the_runs_own_metrics(tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.Popen(sweep_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    second = out / "method-ia3" / "checkpoints" / "step-2" / "COMPLETE"
    deadline = time.monotonic() + 600
    while not second.is_file():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its run, at once
    proc.wait()
    assert (out / "method-lora" / "run_stats.json").is_file() and not (out / "method-ia3" / "run_stats.json").exists()

    again = subprocess.run(sweep_cmd(out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already finished, kept: method-lora" in again.stdout
    assert f"resumed from {out / 'method-ia3' / 'checkpoints'}" in again.stdout + again.stderr

    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["name"] for r in sweep["runs"]] == ["method-lora", "method-ia3"] and all(r["finished"] for r in sweep["runs"])
    for r in sweep["runs"]:
        summary = load_summary(r["dir"])
        assert r["metrics"] == {t: summary.after[t].get(m) for t, m in summary.primary.items()}
        assert sum(v is not None for v in r["metrics"].values()) == 3  # instruct's rougeL needs generation
        assert r["stats"] == json.loads((Path(r["dir"]) / "run_stats.json").read_text())
        assert r["stats"]["method"] == r["values"]["adapter.method"] and r["stats"]["steps"] == 6
        assert r["stats"]["adapter_bytes"] > 0 and r["stats"]["peak_memory_bytes"] > 0
    for task, name in sweep["best"].items():
        best = max(r["metrics"][task] for r in sweep["runs"] if r["metrics"][task] is not None)
        assert next(r for r in sweep["runs"] if r["name"] == name)["metrics"][task] == best
    assert "method-lora" in again.stdout and "(* the best run of each task)" in again.stdout
    assert "<table>" in (out / "report.html").read_text() and "image/png" in (out / "report.html").read_text()


def test_axes_values_and_refusals(tmp_path):
    assert parse_axes(["adapter.method=lora,ia3", "train.max_steps=5"]) == (
        {"adapter.method": ["lora", "ia3"]}, ["train.max_steps=5"])
    assert split_values("[q_proj,v_proj],attention") == ["[q_proj,v_proj]", "attention"]
    runs = grid({"adapter.method": ["lora", "ia3"], "adapter.r": ["4", "8"]}, ["train.max_steps=5"], tmp_path)
    assert [r.name for r in runs] == ["method-lora_r-4", "method-lora_r-8", "method-ia3_r-4", "method-ia3_r-8"]
    assert runs[1].overrides == ["train.max_steps=5", "adapter.method=lora", "adapter.r=8",
                                 f"output_dir={tmp_path / 'method-lora_r-8'}"]
    zipped = grid({"adapter.method": ["lora", "ia3"], "train.learning_rate": ["1e-3", "1e-2"], "seed": ["0", "1"]},
                  [], tmp_path, [["adapter.method", "train.learning_rate"]])
    assert [r.values for r in zipped][:2] == [{"adapter.method": "lora", "train.learning_rate": "1e-3", "seed": "0"},
                                              {"adapter.method": "lora", "train.learning_rate": "1e-3", "seed": "1"}]
    assert len(zipped) == 4 and {r.values["train.learning_rate"] for r in zipped if r.values["adapter.method"] == "ia3"} == {"1e-2"}
    with pytest.raises(UserError, match="different numbers of values"):
        grid({"a.b": ["1", "2"], "c.d": ["1", "2", "3"]}, [], tmp_path, [["a.b", "c.d"]])
    with pytest.raises(UserError, match="at least one key with several values"):
        parse_axes(["train.max_steps=5"])
    from multitune.recipes.sweep import sweep

    with pytest.raises(UserError, match="2 of the sweep's 3 runs cannot start") as e:  # all problems, before any run
        sweep(str(REPO / "configs" / "quickstart.yaml"), ["adapter.method=lora,prompt_tuning,prefix_tuning"],
              tmp_path / "s")
    assert "modules_to_save does not apply to prompt_tuning" in e.value.what and not (tmp_path / "s").exists()
