"""Small whole runs that pin what the quickstart does not exercise."""

import json
from pathlib import Path

import pytest

from conftest import SMALL_TINY
from multitune.config import validate
from multitune.recipes.train import run


def small_run(tmp_path: Path, **overrides) -> dict:
    raw = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name": "tiny", "tiny": SMALL_TINY},
        "tasks": [{"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 64}],
        "train": {"max_steps": 3, "micro_batch_size": 4},
        "eval": {"baseline": False},
    }
    for section, values in overrides.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


def test_full_fine_tuning_saves_the_whole_model(tmp_path):
    from transformers import AutoModelForCausalLM

    result = run(validate(small_run(tmp_path, adapter={"method": "full"})))
    out = tmp_path / "run" / "adapter"
    assert not (out / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    trained = dict(result.model.named_parameters())
    for name, p in reloaded.named_parameters():
        assert p.shape == trained[name].shape
    assert result.metrics["before"] is None and result.metrics["final_step"] == 3


def test_max_steps_overrides_epochs_and_grad_accum_counts_one_step(tmp_path):
    run(validate(small_run(tmp_path, train={"max_steps": 4, "grad_accum_steps": 2, "micro_batch_size": 2},
                           logging={"every_steps": 1})))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]


def baseline_run(tmp_path, monkeypatch, capsys, baseline_max_rows):
    """A run with a baseline; returns (its result, what was printed before the baseline evaluation began,
    the evaluated row indices of each evaluation, the claims evaluation set, what was printed after)."""
    from multitune.recipes import train as recipe

    seen, real = [], recipe.evaluate

    def spy(model, tokenizer, eval_sets, **kw):
        printed = capsys.readouterr().out
        results = real(model, tokenizer, eval_sets, **kw)
        seen.append((printed, [p["index"] for p in results["claims"].predictions], eval_sets[0]))
        return results

    monkeypatch.setattr(recipe, "evaluate", spy)
    result = run(validate(small_run(tmp_path, train={"max_steps": 1},
                                    eval={"baseline": True, "baseline_max_rows": baseline_max_rows,
                                          "generate": "never"})))
    return result, seen[0][0], [indices for _, indices, _ in seen], seen[0][2], capsys.readouterr().out


def test_a_sampled_baseline_is_said_before_it_runs_and_its_row_count_shown(tmp_path, monkeypatch, capsys):
    from multitune.eval.runner import spread

    result, before_baseline, indices, claims, after = baseline_run(tmp_path, monkeypatch, capsys, 5)
    n = len(claims.items)
    notice = f"baseline: claims on 5 of {n} validation rows, spread evenly (eval.baseline_max_rows: null evaluates all)"
    assert n > 5 and notice in before_baseline.splitlines()
    assert indices == [[it.index for it in spread(claims.items, 5)], list(range(n))]  # baseline, then final
    metrics = result.metrics
    assert metrics["before"]["claims"]["rows"] == 5.0 and metrics["after"]["claims"]["rows"] == float(n)
    note = f"before: the untrained model on fewer rows than after (eval.baseline_max_rows): claims 5 of {n}"
    assert note in after.splitlines()  # under the printed before/after table
    assert note in (tmp_path / "run" / "report.html").read_text()
    assert f"claims 5 of {n}, spread evenly." in (tmp_path / "run" / "README.md").read_text()


def test_a_null_baseline_max_rows_evaluates_every_row(tmp_path, monkeypatch, capsys):
    result, before_baseline, indices, claims, after = baseline_run(tmp_path, monkeypatch, capsys, None)
    assert "baseline:" not in before_baseline and "fewer rows" not in after
    assert indices == [list(range(len(claims.items)))] * 2
    assert result.metrics["before"]["claims"]["rows"] == result.metrics["after"]["claims"]["rows"]


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one state per process and refuses a second mixed precision in it: this test's bf16
    run starts from a clean one and leaves a clean one behind."""
    from accelerate.state import AcceleratorState, GradientState

    def reset() -> None:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()

    reset()
    yield
    reset()


def test_a_bf16_autocast_run_generates_at_its_baseline_and_final_evaluations(tmp_path, fresh_accelerate_state):
    """Under autocast the adapters take their layer's input as it comes, bf16 (models/adapters.py), while
    their weights stay float32. `generate` calls the model outside the forward accelerate wrapped in
    autocast, so the evaluation runs under the run's autocast, or the first generated token raises (what
    every GPU run with the default `eval.generate: ends` hit at its baseline). bf16 on the CPU stands in."""
    result = run(validate(small_run(tmp_path, model={"dtype": "bfloat16"},
                                    train={"max_steps": 1, "mixed_precision": "bf16"},
                                    eval={"baseline": True, "generate": "ends", "max_rows": 4,
                                          "generate_max_rows": 2})))
    for when in ("before", "after"):
        claims = result.metrics[when]["claims"]
        assert claims["rows"] == 4.0 and claims["gen_rows"] == 2.0 and 0.0 <= claims["gen_accuracy"] <= 1.0


def test_evaluation_time_is_counted_apart_from_training_and_said_at_the_end(tmp_path, monkeypatch, capsys):
    import time

    from multitune.recipes import train as recipe

    real = recipe.evaluate

    def slow(*args, **kwargs):  # each evaluation takes at least half a second
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(recipe, "evaluate", slow)
    run(validate(small_run(tmp_path, train={"max_steps": 1}, eval={"baseline": True, "generate": "never"})))
    stats = json.loads((tmp_path / "run" / "run_stats.json").read_text())
    assert stats["eval_seconds"] >= 1.0  # the baseline and the final evaluation
    assert stats["train_seconds"] + stats["eval_seconds"] <= stats["wall_seconds"]
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("time: "))
    wall = stats["wall_seconds"]
    assert f"evaluation {stats['eval_seconds'] / 60:.1f} min ({stats['eval_seconds'] / wall:.0%})" in line
