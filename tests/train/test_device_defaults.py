"""Defaults that must be right on a GPU, checked on the CPU where the logic allows: precision and dtype
resolved per device and method, the batch layout per device, TF32, QLoRA's residual stream in its compute
dtype, adapters fed the autocast dtype, dropout off, and fp16 loss scaling that survives an overflow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from multitune.config import validate
from multitune.config.device import describe, for_device
from multitune.config.schema import AdapterConfig, ModelConfig

TASKS = [{"name": "t", "kind": "classification", "source": "demo:claims"}]


def cfg_with(**sections):
    return validate({"tasks": TASKS, **sections})


@pytest.mark.parametrize(("method", "gpu", "bf16", "precision", "dtype"), [
    ("lora", True, True, "bf16", "bfloat16"),     # a frozen 16-bit base, adapters in float32, bf16 autocast
    ("dora", True, True, "bf16", "bfloat16"),
    ("full", True, True, "bf16", "float32"),      # float32 master weights for AdamW, bf16 compute
    ("lora", True, False, "no", "float32"),       # a GPU without bf16 (V100, T4): fp16 stays opt-in
    ("lora", False, False, "no", "float32"),      # a CPU
    ("full", False, True, "no", "float32"),       # a CPU with bf16 units: float32 unless asked
])
def test_auto_precision_and_dtype_per_device_and_method(method, gpu, bf16, precision, dtype):
    cfg = for_device(cfg_with(adapter={"method": method}), gpu=gpu, bf16=bf16)
    assert (cfg.train.mixed_precision, cfg.model.dtype) == (precision, dtype)


def test_explicit_settings_are_kept_and_resolving_twice_changes_nothing():
    cfg = cfg_with(train={"mixed_precision": "no", "share_prefix": True}, model={"dtype": "bfloat16"})
    gpu = for_device(cfg, gpu=True, bf16=True)
    assert (gpu.train.mixed_precision, gpu.train.share_prefix, gpu.model.dtype) == ("no", True, "bfloat16")
    auto = for_device(cfg_with(), gpu=True, bf16=True)
    assert for_device(auto, gpu=False, bf16=False) == auto  # resolved values are explicit from then on


def test_shared_prefix_rows_are_off_on_a_gpu_and_on_on_a_cpu_unless_set():
    assert for_device(cfg_with(), gpu=True, bf16=True).train.share_prefix is False
    assert for_device(cfg_with(), gpu=False, bf16=False).train.share_prefix is True
    assert for_device(cfg_with(data={"packing": True}), gpu=False, bf16=False).train.share_prefix is False
    assert for_device(cfg_with(train={"share_prefix": True}), gpu=True, bf16=True).train.share_prefix is True
    line = describe(for_device(cfg_with(), gpu=True, bf16=True))
    assert line == "layout: padded rows; weights bfloat16, autocast bf16"


def test_dropout_is_off_by_default():
    assert AdapterConfig().dropout == 0.0


def test_a_plan_for_a_gpu_counts_what_a_run_there_would_use():
    from multitune.plan.target import Target, precision_for

    h100 = Target("H100", 80 * 1024**3, 989.0)
    lora = precision_for(cfg_with(), h100)
    assert (lora.weights, lora.act, lora.autocast) == (2, 2, True)
    full = precision_for(cfg_with(adapter={"method": "full"}), h100)
    assert (full.weights, full.act, full.autocast) == (4, 2, True)
    cpu = precision_for(cfg_with(), Target("cpu", 1e9, 0.05, on_gpu=False))
    assert (cpu.weights, cpu.act, cpu.autocast) == (4, 4, False)


def test_tf32_is_switched_on_for_cuda_only():
    from multitune.runtime import tf32_matmuls

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert tf32_matmuls(False) is False and torch.backends.cuda.matmul.allow_tf32 is False
        assert tf32_matmuls(True) is True and torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _hidden_dtypes(model, ids) -> set[torch.dtype]:
    seen = set()
    hooks = [layer.register_forward_hook(lambda m, i, o: seen.add(o[0].dtype if isinstance(o, tuple) else o.dtype))
             for layer in model.base_model.model.model.layers]
    try:
        model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_qlora_keeps_the_residual_stream_in_its_compute_dtype(tiny_dir: Path):
    pytest.importorskip("bitsandbytes")
    from multitune.config.schema import QuantizationConfig
    from multitune.models import adapters, load

    base = load.load_model(str(tiny_dir), ModelConfig(name=str(tiny_dir)),
                           QuantizationConfig(compute_dtype="bfloat16"), torch.device("cpu"))
    model = adapters.attach(base, AdapterConfig(method="qlora", r=4), gradient_checkpointing=True)
    norms = {p.dtype for n, p in model.named_parameters() if "norm" in n}
    assert norms == {torch.bfloat16}  # peft's prepare_model_for_kbit_training made these float32
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert trainable == {torch.float32}  # the adapters: float32 master weights
    assert _hidden_dtypes(model, torch.tensor([[1, 20, 30, 40]])) == {torch.bfloat16}


@pytest.mark.parametrize("autocast", [False, True])
def test_under_autocast_adapters_take_their_layers_input_as_it_comes(tiny_dir: Path, autocast: bool):
    from multitune.models import adapters, load

    base = load.load_model(str(tiny_dir), ModelConfig(name=str(tiny_dir), dtype="bfloat16"))
    model = adapters.attach(base, AdapterConfig(r=4), autocast=autocast)
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    seen = []
    hook = q.lora_A["default"].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(input_ids=torch.tensor([[1, 20, 30, 40]])).logits.float().sum().backward()
    hook.remove()
    # peft copies a bf16 input to the adapters' float32 unless autocast decides the matmul's dtype
    assert seen == [torch.bfloat16 if autocast else torch.float32]
    assert q.lora_B["default"].weight.grad is not None and q.lora_B["default"].weight.dtype == torch.float32


def test_fp16_loss_scaling_survives_an_overflow_and_lowers_the_scale(tiny_dir: Path):
    """An overflowing step must still go through the GradScaler: it skips the update and lowers the scale,
    and the next step trains. (Skipping `optimizer.step()` left the scale where it overflowed and the next
    unscale raised.) torch's CPU GradScaler stands in for CUDA's; accelerate gives none on a CPU."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from multitune.data.collate import pad_batch
    from multitune.data.tokenize import IGNORE, Tokenized
    from multitune.train import optim
    from multitune.train.loop import train_step
    from multitune.train.state import TrainState

    accelerator = Accelerator(cpu=True)
    # An initial scale that overflows float32 (loss x 1e38), lowered by the first overflow to 100.
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1e38, backoff_factor=1e-36)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    cfg = validate({"tasks": TASKS, "adapter": {"method": "full"}, "train": {"learning_rate": 1e-3}}).train
    optimizer = optim.build_optimizer(model, cfg)
    scheduler = optim.build_scheduler(optimizer, cfg, 10)
    model, optimizer = accelerator.prepare(model, optimizer)
    ids = [5, 6, 7, 8, 9, 10]
    batch = pad_batch([Tokenized(ids, [IGNORE] * 3 + ids[3:], 0)], pad_id=0)
    state = TrainState()
    state.start_interval(1)
    weights = [p.detach().clone() for p in model.parameters()]

    first = train_step(model, optimizer, scheduler, accelerator, [batch], 1.0, n_tasks=1)
    state.record_step(first, seconds=0.0)
    assert first.overflow and not first.finite and not first.bad
    assert accelerator.scaler.get_scale() == pytest.approx(100.0)
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))  # no update

    second = train_step(model, optimizer, scheduler, accelerator, [batch], 1.0, n_tasks=1)
    state.record_step(second, seconds=0.0)
    assert second.finite and not second.overflow
    assert any(not torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))
    assert (state.step, state.bad_steps, state.consecutive_bad_steps) == (2, 0, 0)

