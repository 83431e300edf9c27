"""The quickstart, smaller: a multi-task LoRA run in-process on the demo tasks, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from multitune import config
from multitune.config.device import for_device
from multitune.recipes.train import run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    cfg = config.load(REPO / "configs" / "quickstart.yaml", [
        f"output_dir={out}", "train.epochs=2",
        "tasks.claims.max_rows=200", "tasks.intents.max_rows=360", "tasks.intents.weight=2", "tasks.quiz.max_rows=300",
        "tasks.instruct.max_rows=80", "logging.every_steps=5", "eval.every_steps=40",
    ])
    return cfg, run(cfg)


def test_writes_the_output_folder_contract(quick):
    cfg, _ = quick
    out = Path(cfg.output_dir)
    # what ran: the config with its device-dependent settings decided for this CPU (config/device.py)
    assert config.load(out / "config.yaml") == for_device(cfg, gpu=False, bf16=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows][:3] == [5, 10, 15]
    assert {"lr", "grad_norm", "tokens_per_s", "train/claims/loss", "epoch"} <= train_rows[0].keys()
    final = train_rows[-1]["step"]
    assert final == 128  # (160 + 288 x 2 + 239 + 64) // 16 steps an epoch, 2 epochs
    assert [r["step"] for r in rows if "eval/claims/accuracy" in r] == [0, 40, 80, 120, 128]
    assert (out / "adapter" / "adapter_config.json").is_file()
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(metrics["after"]) == {"claims", "intents", "quiz", "instruct"}
    predictions = (out / "eval" / "claims" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == metrics["after"]["claims"]["rows"] == 40
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["claims"]["labels"] == ["Claim", "Not a Claim"] and stats["claims"]["train"]["examples"] == 160


def test_tuned_accuracy_beats_the_untrained_model_on_every_closed_task(quick):
    _, result = quick
    before, after = result.metrics["before"], result.metrics["after"]
    for task in ("claims", "intents", "quiz"):
        assert after[task]["accuracy"] > before[task]["accuracy"] + 0.2, task
    assert after["claims"]["accuracy"] >= 0.9
    for task in after:
        assert after[task]["loss"] < before[task]["loss"], task


def test_adapter_weights_changed_and_base_weights_did_not(quick):
    cfg, result = quick
    base_dir = Path(json.loads((Path(cfg.output_dir) / "adapter" / "adapter_config.json").read_text())
                    ["base_model_name_or_path"])
    base = load_file(base_dir / "model.safetensors")
    checked = 0
    for name, p in result.model.named_parameters():
        if ".base_layer." in name:
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(p.detach(), base[key]), name
            assert not p.requires_grad
            checked += 1
        if "lora_B" in name:
            assert p.detach().abs().sum() > 0, name  # LoRA B starts at zero: training moved it
    assert checked > 0
    trained_head = dict(result.model.named_parameters())["base_model.model.lm_head.modules_to_save.default.weight"]
    assert not torch.equal(trained_head.detach(), base["lm_head.weight"])


def test_the_saved_adapter_loads_with_peft_and_reproduces_the_model(quick):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, result = quick
    adapter = Path(cfg.output_dir) / "adapter"
    base_dir = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter)).eval()
    ids = torch.tensor([result.tokenizer("My car was hit, I want to claim.")["input_ids"]])
    with torch.no_grad():
        expected = result.model.eval()(input_ids=ids).logits
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected)


def test_predict_scores_and_generates_with_the_trained_run(quick, tmp_path):
    from multitune.cli import main

    cfg, _ = quick
    rows = tmp_path / "claims.csv"
    rows.write_text("text\nYesterday a burst pipe flooded the kitchen floor. I want to file a claim.\n"
                    "\"Hi, when does my home insurance renew? Thanks.\"\n")
    out = tmp_path / "pred.jsonl"
    assert main(["predict", cfg.output_dir, "--input", str(rows), "--output", str(out), "--task", "claims"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["prediction"] for g in got] == ["Claim", "Not a Claim"]
    assert all(g["score"] < 0 for g in got)

    instr = tmp_path / "instr.jsonl"
    instr.write_text(json.dumps({"instruction": "Give the opposite of the word.", "input": "hot"}) + "\n")
    out2 = tmp_path / "pred2.jsonl"
    assert main(["predict", cfg.output_dir, "--input", str(instr), "--output", str(out2), "--task", "instruct",
                 "--max-new-tokens", "4"]) == 0
    (row,) = [json.loads(line) for line in out2.read_text().splitlines()]
    assert row["input"] == "hot" and isinstance(row["prediction"], str)
