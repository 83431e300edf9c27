"""Methods, precision and memory switches on the CPU: QLoRA (bitsandbytes 4-bit runs on CPUs), DoRA,
rsLoRA, target presets, gradient checkpointing, answer-only logits, hardware checks, shipped configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import SMALL_TINY
from multitune import config
from multitune.config import validate
from multitune.data.collate import pad_batch
from multitune.data.tokenize import IGNORE, Tokenized
from multitune.errors import UserError
from multitune.loss import answer_token_count
from multitune.models import load
from multitune.recipes.train import run
from multitune.train.loop import forward_loss

REPO = Path(__file__).resolve().parents[2]


def small(out: Path, **sections) -> dict:
    raw = {
        "output_dir": str(out),
        "model": {"name": "tiny", "tiny": SMALL_TINY},
        "tasks": [{"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 48}],
        "train": {"max_steps": 3, "micro_batch_size": 4, "learning_rate": 1e-3},
        "eval": {"baseline": False, "max_rows": 4},
    }
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v}
    return raw


def adapter_config(out: Path) -> dict:
    return json.loads((out / "adapter" / "adapter_config.json").read_text())


def test_qlora_trains_a_4bit_base_on_the_cpu_and_its_adapter_loads(tmp_path):
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = run(validate(small(tmp_path / "q", adapter={"method": "qlora"})))
    base_layer = result.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(base_layer).__name__ == "Linear4bit" and base_layer.weight.quant_type == "nf4"
    cfg = adapter_config(tmp_path / "q")
    assert cfg["r"] == 16 and not cfg.get("use_dora")
    # The adapter applies to the 16-bit base too (how it is merged and served).
    base = AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"])
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "q" / "adapter"))
    lora_b = dict(loaded.named_parameters())["base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"]
    assert lora_b.abs().sum() > 0
    assert torch.isfinite(loaded(input_ids=torch.tensor([[1, 20, 30]])).logits).all()


def test_qlora_trains_the_quickstart_config_as_shipped(tmp_path):
    # The quickstart's own tiny shape (width 256, intermediate 704) through bitsandbytes' CPU 4-bit kernel,
    # which repacks weights in blocks of 32 rows for evaluation (688 used to end in its assertion).
    pytest.importorskip("bitsandbytes")
    from multitune import config

    out = tmp_path / "quick-qlora"
    result = run(config.load(REPO / "configs" / "quickstart.yaml", [
        f"output_dir={out}", "adapter.method=qlora", "quantization.compute_dtype=float32",
        "train.max_steps=2", "tasks.claims.max_rows=40", "tasks.intents.max_rows=40", "tasks.quiz.max_rows=40",
        "tasks.instruct.max_rows=20", "eval.max_rows=4", "eval.generate=never", "eval.baseline=false",
    ]))
    assert set(result.metrics["after"]) == {"claims", "intents", "quiz", "instruct"}
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_qlora_on_a_cpu_refuses_a_width_its_kernel_cannot_take_before_loading(tmp_path):
    pytest.importorskip("bitsandbytes")
    raw = small(tmp_path / "odd", adapter={"method": "qlora"})
    raw["model"]["tiny"] = {**SMALL_TINY, "intermediate_size": 100}
    with pytest.raises(UserError, match=r"multiple of 32, and intermediate_size = 100"):
        run(validate(raw))
    assert not (tmp_path / "odd" / "checkpoints").exists()


def test_dora_and_rslora_are_saved_in_the_adapter_and_reload_exactly(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = run(validate(small(tmp_path / "d", adapter={"method": "dora", "use_rslora": True})))
    cfg = adapter_config(tmp_path / "d")
    assert cfg["use_dora"] is True and cfg["use_rslora"] is True
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"]),
                                       str(tmp_path / "d" / "adapter")).eval()
    ids = torch.tensor([[1, 20, 30, 40]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, result.model.eval()(input_ids=ids).logits)


def test_attention_preset_targets_only_the_attention_projections(tmp_path):
    result = run(validate(small(tmp_path / "a", adapter={"target_modules": "attention"})))
    targeted = {n.split(".")[-4] for n, _ in result.model.named_parameters() if "lora_A" in n}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_bf16_mixed_precision_runs_on_the_cpu(tmp_path):
    # In a fresh process: accelerate fixes the precision of the first Accelerator in a process.
    import subprocess
    import sys

    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(small(tmp_path / "b", train={"mixed_precision": "bf16"})))
    r = subprocess.run([sys.executable, "-m", "multitune", "train", str(path)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "b" / "eval" / "metrics.json").read_text())["final_step"] == 3
    from multitune.runtime import cpu_bf16_units

    # said once, before the run, where the CPU would take bf16's slow path
    assert ("has no bfloat16 units" in r.stderr) == (cpu_bf16_units() is False)


def test_a_compiled_run_trains_checkpoints_and_saves_the_same_adapter(tmp_path):
    # torch.compile wraps the prepared model; checkpoints and the adapter must come from the plain module
    # (with the same keys as an uncompiled run). A fresh process: accelerate keeps the first dynamo setting.
    import subprocess
    import sys

    from safetensors.torch import load_file

    raw = small(tmp_path / "c", train={"compile": True}, eval={"generate": "never"}, checkpoint={"every_steps": 2},
                logging={"every_steps": 1})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "multitune", "train", str(path)], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "c" / "checkpoints").glob("step-*")) == ["step-2", "step-3"]
    run(validate({**raw, "output_dir": str(tmp_path / "e"), "train": {**raw["train"], "compile": False}}))
    compiled = load_file(tmp_path / "c" / "adapter" / "adapter_model.safetensors")
    eager = load_file(tmp_path / "e" / "adapter" / "adapter_model.safetensors")
    assert compiled.keys() == eager.keys()

    def losses(out):
        return [json.loads(x)["train/loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]

    # Compiled kernels round differently: the losses agree closely; Adam turns tiny gradient differences
    # into updates of up to the learning rate (1e-3) a step where a gradient is near zero: 3 steps.
    assert losses(tmp_path / "c") == pytest.approx(losses(tmp_path / "e"), rel=1e-3) and len(losses(tmp_path / "e")) == 3
    for k in eager:
        assert (compiled[k] - eager[k]).abs().max() <= 3e-3, k


def uneven(vocab: int) -> list[Tokenized]:
    out = []
    for i, length in enumerate([9, 14, 6, 11]):
        ids = [(7 * i + 3 * j) % (vocab - 10) + 10 for j in range(length)]
        out.append(Tokenized(ids, [IGNORE] * (length - 3) + ids[-3:], task_id=0))
    return out


def grads(model, batch, answer_logits_only: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    token_loss = forward_loss(model, batch, answer_logits_only)  # (B, T-1)
    (token_loss.sum() / answer_token_count(batch["labels"])).backward()
    return token_loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mask_supported", [True, False], ids=["boolean-mask", "shared-columns"])
def test_answer_only_logits_give_the_same_loss_and_gradients(model, tokenizer, monkeypatch, mask_supported):
    """Both paths: a boolean `logits_to_keep`, and the shared-columns one for transformers 5.17 (the GPU
    images'), which takes no boolean."""
    from multitune.loss import logits_to_keep_argument
    from multitune.train import loop

    if not mask_supported:
        monkeypatch.setattr(loop, "logits_to_keep_argument", lambda keep: logits_to_keep_argument(keep, False))
    batch = pad_batch(uneven(len(tokenizer)), tokenizer.pad_token_id)
    full_sums, full = grads(model, batch, answer_logits_only=False)
    kept_sums, kept = grads(model, batch, answer_logits_only=True)
    torch.testing.assert_close(kept_sums, full_sums)
    for name in full:
        torch.testing.assert_close(kept[name], full[name], rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from multitune.config.schema import AdapterConfig
    from multitune.models.adapters import attach

    def lora(checkpointing: bool):
        torch.manual_seed(0)  # the same adapter initialisation both times
        base = AutoModelForCausalLM.from_pretrained(tiny_dir)
        return attach(base, AdapterConfig(dropout=0.0), gradient_checkpointing=checkpointing).train()

    batch = pad_batch(uneven(len(tokenizer)), tokenizer.pad_token_id)
    _, plain = grads(lora(False), batch, True)
    checkpointed_model = lora(True)
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed_model.modules())
    _, checkpointed = grads(checkpointed_model, batch, True)
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a CPU-only machine refuses")
def test_what_the_hardware_cannot_do_is_refused_before_loading():
    cfg = validate(small(Path("x"), train={"mixed_precision": "fp16"}, model={"attn_implementation": "flash_attention_2"}))
    with pytest.raises(UserError) as e:
        load.check_hardware(cfg)
    assert "fp16 needs a CUDA GPU" in str(e.value) and "flash_attention_2 needs a CUDA GPU" in str(e.value)


def test_quantization_settings_without_qlora_are_an_error():
    with pytest.raises(UserError, match="quantization applies only to adapter.method=qlora"):
        validate(small(Path("x"), quantization={"quant_type": "fp4"}))


# Every shipped config: run configs load and validate; accelerate topologies parse with accelerate's own
# loader and use only FSDP keys accelerate knows.
SHIPPED = sorted(p for p in (REPO / "configs").rglob("*.yaml"))
FSDP_KEYS = {"fsdp_version", "fsdp_auto_wrap_policy", "fsdp_transformer_layer_cls_to_wrap", "fsdp_reshard_after_forward",
             "fsdp_state_dict_type", "fsdp_cpu_ram_efficient_loading", "fsdp_offload_params",
             "fsdp_activation_checkpointing"}


def test_the_shipped_configs_are_the_ones_this_test_knows():
    # A config added without being listed here fails, so none escapes the validation below.
    names = sorted(str(p.relative_to(REPO / "configs")) for p in SHIPPED)
    assert names == ["accelerate/ddp-1xN.yaml", "accelerate/fsdp-1x4.yaml", "accelerate/fsdp-3x4.yaml",
                     "accelerate/fsdp-qlora-1x4.yaml", "accelerate/single-gpu.yaml", "banking77-tiny-full.yaml",
                     "banking77-tiny-lora.yaml", "multitask-llama3-8b-lora.yaml", "quickstart.yaml",
                     "smollm2-banking77.yaml", "smollm2-methods.yaml", "smollm2-multitask.yaml"]
    assert len(SHIPPED) == 12


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_config_validates(path):
    text = path.read_text()
    first = text.splitlines()[0]
    assert text.startswith("#") and ("multitune train" in first or "multitune sweep" in first or "launch" in text)
    if path.parent.name != "accelerate":
        config.load(path)
        return
    from accelerate.commands.config.config_args import load_config_from_file

    cluster = load_config_from_file(str(path))
    raw = yaml.safe_load(text)
    assert cluster.num_processes == raw["num_processes"]
    if raw["distributed_type"] == "FSDP":
        assert set(raw["fsdp_config"]) <= FSDP_KEYS and raw["fsdp_config"]["fsdp_version"] == 2
        assert raw["num_processes"] % raw["num_machines"] == 0
    if "parallelism_config" in raw:  # HSDP: a copy per machine, sharded over its processes
        hsdp = raw["parallelism_config"]
        assert set(hsdp) == {"parallelism_config_dp_replicate_size", "parallelism_config_dp_shard_size"}
        assert hsdp["parallelism_config_dp_replicate_size"] == raw["num_machines"]
        assert hsdp["parallelism_config_dp_replicate_size"] * hsdp["parallelism_config_dp_shard_size"] == \
            raw["num_processes"]
