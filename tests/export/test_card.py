"""The model card: honest about the base, the method, the data's licences and the per-task metrics."""

from __future__ import annotations

import json
import re
import shutil

import yaml

from multitune import config
from multitune.report.card import (
    DEMO_LICENCE,
    UNKNOWN_LICENCE,
    dataset_licence,
    model_card,
    read_run_metrics,
    write_model_card,
)


def test_licences_come_from_the_table_and_are_never_invented():
    assert dataset_licence("PolyAI/banking77") == "CC BY 4.0"
    assert dataset_licence("tau/commonsense_qa") == "MIT"
    assert dataset_licence("knkarthick/dialogsum") == "CC BY-NC-SA 4.0"
    assert dataset_licence("infinite-dataset-hub/TextClaimsDataset") == "MIT"
    assert dataset_licence("demo:claims") == DEMO_LICENCE
    assert dataset_licence("someone/other-data") == UNKNOWN_LICENCE == "unknown: check the dataset card"
    assert dataset_licence("../shared/data/banking77/train.parquet") == UNKNOWN_LICENCE


def _front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def _row(card: str, *cells: str) -> str:
    """The one table row that starts with these cells."""
    rows = [line for line in card.splitlines() if line.startswith("| " + " | ".join(cells) + " |")]
    assert len(rows) == 1, (cells, rows)
    return rows[0]


def test_card_of_the_tiny_run_reports_its_metrics_from_eval_metrics_json(run_dir):
    card = model_card(run_dir, "alice/tiny-demo")
    meta = _front_matter(card)
    index = meta.pop("model-index")
    assert meta == {"library_name": "peft", "pipeline_tag": "text-generation", "tags": ["multitune", "lora"]}
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    # The Hub reads the metrics after training from model-index: every task's, counts left out.
    assert [m["name"] for m in index] == ["tiny-demo"]
    shown = {(r["task"]["name"], m["type"]): (r["task"]["type"], r["dataset"]["split"], m["value"])
             for r in index[0]["results"] for m in r["metrics"]}
    assert shown[("claims", "accuracy")] == ("text-classification", "validation",
                                             metrics["after"]["claims"]["accuracy"])
    assert shown[("instruct", "loss")] == ("text-generation", "validation", metrics["after"]["instruct"]["loss"])
    assert ("claims", "rows") not in shown
    assert len(shown) == sum(1 for values in metrics["after"].values() for k, v in values.items()
                             if k not in ("rows", "gen_rows") and v is not None)
    assert read_run_metrics(run_dir) == metrics  # one source for the card, the report and the file
    before, after = metrics["before"]["claims"]["accuracy"], metrics["after"]["claims"]["accuracy"]
    assert _row(card, "claims", "accuracy") == (
        f"| claims | accuracy | {before:.4f} | {after:.4f} | {after - before:+.4f} |")
    loss = metrics["after"]["instruct"]["loss"]
    assert f"| {loss:.4f} |" in _row(card, "instruct", "loss")
    stats = json.loads((run_dir / "data_stats.json").read_text())
    assert _row(card, "claims", "classification") == (
        f"| claims | classification | `demo:claims` | {DEMO_LICENCE} | {stats['claims']['rows']} | "
        f"{stats['claims']['train']['examples']} | {stats['claims']['val']['examples']} | 1 | "
        f"{stats['claims']['train']['tokens']} |")
    assert "| LoRA rank r | 8 |" in card and "| modules trained in full | embed_tokens, lm_head |" in card
    assert "| learning rate | 0.01, cosine schedule, warmup ratio 0 |" in card
    assert "6 optimizer steps done" in card
    assert "knows no language" in card and "a test of the pipeline, not a model to use" in card
    assert 'PeftModel.from_pretrained(base, "alice/tiny-demo")' in card
    assert "--lora-modules tiny-demo=alice/tiny-demo" in card
    assert "vLLM's LoRA support does not load" in card  # modules_to_save: serve the merged model instead
    assert str(run_dir) not in card  # no local path of the training machine


def test_card_of_a_hub_model_names_base_datasets_and_licences(run_dir, tmp_path):
    """A run on a Hub model and Hub datasets: only its config differs, so a copy with another config.yaml
    (and the same metrics) shows what the card says about them."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["model"]["name"] = "meta-llama/Llama-3.1-8B-Instruct"
    raw["model"]["revision"] = "0e9e39f"
    raw["adapter"]["modules_to_save"] = []
    raw["tasks"][0]["source"] = "PolyAI/banking77"
    raw["tasks"][1]["source"] = "knkarthick/dialogsum"
    config.save(config.validate(raw), run / "config.yaml")

    card = model_card(run, "alice/llama-multi", merged=True)
    meta = _front_matter(card)
    assert meta["library_name"] == "transformers" and meta["tags"] == ["multitune", "lora", "merged"]
    assert meta["base_model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert meta["datasets"] == ["PolyAI/banking77", "knkarthick/dialogsum"]
    assert "| [PolyAI/banking77](https://huggingface.co/datasets/PolyAI/banking77) | CC BY 4.0 |" in card
    assert "| CC BY-NC-SA 4.0 |" in card and "non-commercial licence" in card
    assert "at revision `0e9e39f`" in card
    assert 'AutoModelForCausalLM.from_pretrained("alice/llama-multi"' in card and "PeftModel" not in card
    assert "vllm serve alice/llama-multi\n" in card
    assert "a test of the pipeline" not in card


def test_write_model_card_writes_readme_atomically(run_dir, tmp_path):
    path = write_model_card(run_dir, "alice/x", path=tmp_path / "README.md")
    text = path.read_text()
    assert text == model_card(run_dir, "alice/x") and text.startswith("---\nlibrary_name: peft\n")
    assert not [p for p in tmp_path.iterdir() if re.match(r"\..*\.tmp$", p.name)]
