"""Small whole runs that pin what the quickstart does not exercise."""

import json
from pathlib import Path

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
