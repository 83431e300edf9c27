"""`multitune merge`: the merged model is a plain transformers model that answers like base + adapter."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from multitune.cli import main
from multitune.data.tokenize import prompt_ids
from multitune.errors import UserError
from multitune.eval.generate import greedy
from multitune.export.merge import compare_logits, merge_dtype, merge_run
from multitune.models import load
from multitune.models.trained import load_run

PROMPTS = [
    [{"role": "system", "content": "Classify the user's text. Reply with the label only."},
     {"role": "user", "content": "Labels: Claim, Not a Claim\n\nText: A tree fell on my roof last night."}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Give the opposite of the word.\n\nhot"}],
    [{"role": "user", "content": "Hello"}],
]


@pytest.fixture(scope="module")
def merged_dir(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("merge") / "merged"
    assert main(["merge", str(run_dir), "--output", str(out)]) == 0
    return out


def test_merged_model_loads_in_plain_transformers_and_answers_like_base_plus_adapter(run_dir, merged_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in merged_dir.iterdir()}
    assert not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    reference, _, _ = load_run(run_dir)
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
    pad = load.pad_id(tokenizer)

    expected = greedy(reference, tokenizer, prompts, 12, 4, pad)
    assert greedy(merged, tokenizer, prompts, 12, 4, pad) == expected
    assert any(expected), "the run should generate something for the comparison to mean anything"
    with torch.no_grad():
        ids = torch.tensor([prompts[0]])
        got, want = merged(input_ids=ids).logits, reference(input_ids=ids).logits
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        with reference.disable_adapter():  # the adapter must matter, or the comparison proves nothing
            assert (reference(input_ids=ids).logits - want).abs().max() > 1.0


def test_modules_to_save_are_merged_as_trained(run_dir, merged_dir):
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    merged = load_file(merged_dir / "model.safetensors")
    for module in ("lm_head", "model.embed_tokens"):
        trained = next(v for k, v in adapter.items() if k.endswith(f"{module}.weight"))
        assert torch.equal(merged[f"{module}.weight"], trained), module


def test_merge_prints_the_largest_difference(run_dir, tmp_path, capsys):
    assert main(["merge", str(run_dir), "--output", str(tmp_path / "m"), "--dtype", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "merged model (bfloat16)" in out and "largest logit difference" in out
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert load_file(tmp_path / "m" / "model.safetensors")["lm_head.weight"].dtype == torch.bfloat16


def test_merge_refuses_a_non_empty_output_and_a_full_fine_tune(run_dir, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        merge_run(run_dir, tmp_path / "busy")
    assert (tmp_path / "busy" / "x").read_text() == "keep me"

    full = tmp_path / "full"  # what a full fine-tune leaves in adapter/: a whole model and its tokenizer
    (full / "adapter").mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", full / "config.yaml")
    (full / "adapter" / "config.json").write_text("{}")
    save_file({"lm_head.weight": torch.zeros(2, 2)}, full / "adapter" / "model.safetensors")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(run_dir / "adapter" / name, full / "adapter" / name)
    with pytest.raises(UserError, match="nothing to merge"):
        merge_run(full, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merge_dtype_is_never_quantised_and_qlora_merges_in_16_bits():
    assert merge_dtype("lora", "auto", torch.float32) == torch.float32
    assert merge_dtype("lora", "auto", torch.bfloat16) == torch.bfloat16
    assert merge_dtype("qlora", "auto", torch.float32) == torch.bfloat16  # 4-bit training, 16-bit merge
    assert merge_dtype("qlora", "auto", torch.float16) == torch.float16
    assert merge_dtype("qlora", "fp32", None) == torch.float32
    with pytest.raises(UserError, match="unknown dtype"):
        merge_dtype("lora", "int4", None)


def test_a_merge_that_moved_the_logits_fails_the_check():
    ref = [torch.tensor([[0.0, 10.0], [5.0, 1.0]])]
    close = [ref[0] + 1e-5]
    far = [torch.tensor([[0.0, 10.0], [5.0, 5.5]])]
    diff, agree, tol = compare_logits(ref, close, torch.float32)
    assert diff == pytest.approx(1e-5, rel=0.01) and agree == 1.0 and tol == pytest.approx(1e-3)
    diff, agree, tol = compare_logits(ref, far, torch.float32)
    assert diff == pytest.approx(4.5) and agree == 0.5 and diff > tol
