"""The shipped multi-task config: valid as shipped, and runnable here with overrides that point its sources
at ../shared/data and its model at the tiny one (`data preview` and a few training steps)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from data_helpers import shared_data

from conftest import SMALL_TINY
from multitune import config

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "multitask-llama3-8b-lora.yaml"


def local_overrides(data: Path, max_rows: int) -> list[str]:
    return [
        "model.name=tiny",
        f"tasks.banking77.source={data / 'banking77' / 'train.parquet'}",
        f"tasks.commonsense_qa.source={data / 'commonsense_qa' / 'train.jsonl'}", "tasks.commonsense_qa.val_split=null",
        f"tasks.dialogsum.source={data / 'dialogsum' / 'dev.jsonl'}", "tasks.dialogsum.val_split=null",
        *(f"tasks.{t}.max_rows={max_rows}" for t in ("banking77", "commonsense_qa", "dialogsum")),
        *(f"model.tiny.{k}={v}" for k, v in SMALL_TINY.items()),
        "model.tiny.pretrain_steps=0",  # on dialogues of 500 tokens it would take most of the test's time
    ]


def test_the_shipped_config_names_the_hub_datasets_and_llama():
    cfg = config.load(CONFIG)
    assert cfg.model.name == "meta-llama/Llama-3.1-8B-Instruct"
    assert [(t.name, t.kind, t.source) for t in cfg.tasks] == [
        ("banking77", "classification", "PolyAI/banking77"),
        ("commonsense_qa", "multiple_choice", "tau/commonsense_qa"),
        ("dialogsum", "summarization", "knkarthick/dialogsum"),
    ]
    assert cfg.data.packing and cfg.data.mixture.strategy == "temperature"
    assert CONFIG.read_text().startswith("# multitune train configs/multitask-llama3-8b-lora.yaml")


def test_data_preview_on_the_local_copies(tmp_path):
    overrides = local_overrides(shared_data(), max_rows=60)  # as the training test: one tiny build for both
    r = subprocess.run([sys.executable, "-m", "multitune", "data", "preview", str(CONFIG), "-n", "1", *overrides],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for header in ("=== banking77 (classification)", "=== commonsense_qa (multiple_choice)",
                   "=== dialogsum (summarization)"):
        assert header in out
    assert "[[card_arrival<|eot_id|>]]" in out  # banking77's first row, its answer the only trained text
    assert "E. avoid<|eot_id|>" in out and "[[A<|eot_id|>]]" in out
    assert "packing:" in out and "Traceback" not in r.stderr


def test_a_few_packed_training_steps_on_the_local_copies(tmp_path):
    from multitune.recipes.train import run

    out = tmp_path / "run"
    cfg = config.load(CONFIG, [*local_overrides(shared_data(), max_rows=60), f"output_dir={out}",
                               "train.mixed_precision='no'", "train.max_steps=2", "train.grad_accum_steps=1",
                               "data.max_seq_len=512", "eval.max_rows=2", "eval.baseline=false",
                               "logging.every_steps=1"])
    result = run(cfg)
    stats = json.loads((out / "data_stats.json").read_text())
    assert list(stats) == ["banking77", "commonsense_qa", "dialogsum"]
    assert stats["banking77"]["rows"] == 60 and stats["commonsense_qa"]["train"]["examples"] == 48
    assert {"epoch", "empty_rows_dropped", "validation", "tokenize_cache"} <= stats["dialogsum"].keys()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    assert all(r["tokens_per_s"] > 0 for r in train_rows)
    assert set(result.metrics["after"]) == {"banking77", "commonsense_qa", "dialogsum"}
