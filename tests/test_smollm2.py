"""A real pretrained chat model end to end: LoRA on SmolLM2-135M-Instruct (ChatML, 49k vocabulary, tied
head) read from its GGUF, then the adapter in plain peft, merge, and answers that stop at `<|im_end|>`.

Kept to a few steps and rows: each SmolLM2 step costs about a second on 2 cores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from multitune.cli import main
from multitune.config import validate
from multitune.data.tokenize import prompt_ids
from multitune.eval.generate import greedy
from multitune.models import gguf, load
from multitune.models.trained import load_run
from multitune.serve.engine import ChatModel, GenerationSettings

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
CLAIM = [{"role": "system", "content": "Classify the user's text. Reply with the label only."},
         {"role": "user", "content": "Labels: Claim, Not a Claim\n\nText: A tree fell on my roof last night."}]


@pytest.fixture(scope="module")
def run_dir(smollm2_dir, tmp_path_factory) -> Path:
    from multitune.recipes.train import run

    out = tmp_path_factory.mktemp("smollm2") / "run"
    run(validate({
        "output_dir": str(out),
        "model": {"name": "smollm2-135m-instruct"},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
        "tasks": [{"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 40}],
        "data": {"max_seq_len": 96},
        "train": {"max_steps": 3, "micro_batch_size": 4, "learning_rate": 5e-4, "warmup_ratio": 0.0},
        "eval": {"max_rows": 4, "micro_batch_size": 4, "generate_max_rows": 2, "max_new_tokens": 8},
        "logging": {"every_steps": 1},
    }))
    return out


def test_the_run_records_its_gguf_base_and_evaluates_before_and_after(run_dir):
    saved = (run_dir / "config.yaml").read_text()
    assert f"gguf_sha256: {gguf.sha256(gguf.smollm2_file())}" in saved
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["before"]["claims"]["rows"] == metrics["after"]["claims"]["rows"] == 4
    assert 0.0 <= metrics["before"]["claims"]["gen_invalid_rate"] <= 1.0
    card = (run_dir / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert gguf.sha256(gguf.smollm2_file()) in card


def test_the_adapter_loads_with_peft_on_the_converted_base(run_dir, smollm2_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = run_dir / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(smollm2_dir)
    # The converted folder stores float16 (the GGUF's blocks have float16 scales); on a CPU load float32.
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, str(adapter)).eval()
    reference, tokenizer, _ = load_run(run_dir)
    ids = torch.tensor([prompt_ids(tokenizer, CLAIM)])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, reference.eval()(input_ids=ids).logits)
        base_logits = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()(input_ids=ids).logits
    assert not torch.allclose(base_logits, reference(input_ids=ids).logits), "training changed nothing"


def test_chat_answers_stop_at_im_end(run_dir):
    model = ChatModel.from_run(run_dir)
    done = model.complete(FRANCE, GenerationSettings(max_new_tokens=40))
    assert "Paris" in done.text  # a pretrained model, lightly tuned, still knows it
    assert done.finish_reason == "stop" and done.completion_tokens < 40
    assert "<|im_end|>" not in done.text and "<|im_start|>" not in done.text


def test_merge_answers_like_base_plus_adapter(run_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged_dir = tmp_path / "merged"
    assert main(["merge", str(run_dir), "--output", str(merged_dir), "--dtype", "float32"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    reference, _, _ = load_run(run_dir)
    prompts = [prompt_ids(tokenizer, p) for p in (FRANCE, CLAIM)]
    expected = greedy(reference, tokenizer, prompts, 16, 2, load.pad_id(tokenizer))
    assert greedy(merged, tokenizer, prompts, 16, 2, load.pad_id(tokenizer)) == expected
    assert "Paris" in expected[0]


def test_qlora_trains_smollm2_on_this_cpu(smollm2_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    from multitune.recipes.train import run

    out = tmp_path / "qlora"
    result = run(validate({
        "output_dir": str(out),
        "model": {"name": "smollm2-135m-instruct"},
        "adapter": {"method": "qlora", "r": 8, "alpha": 16, "dropout": 0.0},
        "quantization": {"compute_dtype": "float32"},
        "tasks": [{"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 20}],
        "data": {"max_seq_len": 96},
        "train": {"max_steps": 2, "micro_batch_size": 4, "learning_rate": 5e-4, "warmup_ratio": 0.0},
        "eval": {"baseline": False, "max_rows": 2, "generate": "never"},
    }))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in rows if "train/loss" in r)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert 0.0 <= result.metrics["after"]["claims"]["accuracy"] <= 1.0


def test_data_preview_shows_chatml_with_the_trained_tokens_marked(smollm2_dir, tmp_path):
    from multitune.recipes.preview import preview

    cfg = validate({"output_dir": str(tmp_path / "p"), "model": {"name": "smollm2-135m-instruct"},
                    "tasks": [{"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 20}]})
    shown = preview(cfg, task=None, n=1, color=False)
    assert "<|im_start|>assistant\n[[" in shown
    assert "<|im_end|>]]\n" in shown  # the end of turn is trained, the newline after it is not
