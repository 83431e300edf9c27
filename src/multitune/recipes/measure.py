"""`multitune plan --measure N`: N real training steps of a run's config on this machine, with the
library's own loading, adapters, optimizer and `loop.train_step` on the run's own first batches, for the
peak memory and the time per step that the plan's estimate is checked against.

Peak memory is `torch.cuda.max_memory_allocated` on a GPU. On a CPU it is the process's high-water
resident memory (VmHWM), reset just before the model loads (Linux `/proc/self/clear_refs`), so data
preparation's transient peak is not counted; what the process held before the model (Python, torch, the
libraries, the tokenised data) is measured then and reported as the fixed part.
"""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path
from typing import Any

from multitune.config.schema import RunConfig
from multitune.data.prepare import Prepared
from multitune.models import adapters, attention, load
from multitune.train import loop, optim


def rss_bytes(field: str = "VmRSS") -> float:
    """This process's resident memory (`VmRSS`) or its high-water mark (`VmHWM`), from /proc; where that
    is missing, getrusage's maximum resident size (which cannot be reset)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) * 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_peak_rss() -> bool:
    """Reset the high-water mark to the current resident size; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def warm_up(cfg: RunConfig) -> float:
    """Run one training step of a minute model of the same kind (adapter, precision) and return the
    resident memory afterwards: torch pages its kernels' code in on first use, which the fixed part of a
    CPU process must include, or every estimate would miss it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    # No modules_to_save or starting text: the minute model has no folder to read a tokenizer from.
    model = adapters.attach(LlamaForCausalLM(config), cfg.adapter.model_copy(update={
        "modules_to_save": [], "prompt_init_text": None, "lora_init": "default",
        "method": "lora" if cfg.adapter.method == "qlora" else cfg.adapter.method}), cfg.train.gradient_checkpointing)
    optimizer = optim.build_optimizer(model, cfg.train)
    ids = torch.arange(16).reshape(2, 8)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.train.mixed_precision == "bf16"):
        loss = loop.forward_loss(model, batch, cfg.train.answer_logits_only).sum()
    loss.backward()
    optimizer.step()
    del model, optimizer, loss
    return rss_bytes()


def measure(cfg: RunConfig, model_name: str, tokenizer: Any, prepared: Prepared, steps: int) -> dict[str, Any]:
    """Run `steps` optimizer steps (the run's first ones, one process) and return the peak memory, the
    fixed memory before the model, the time of every step and the real tokens each step trained on."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cuda = torch.cuda.is_available()
    cfg = load.for_this_machine(cfg)
    load.check_hardware(cfg)
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=not cuda)
    fixed = 0.0 if cuda else warm_up(cfg)
    resettable = cuda or reset_peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    quantization = cfg.quantization if cfg.adapter.method == "qlora" else None
    base = load.load_model(model_name, cfg.model, quantization, accelerator.device)
    set_seed(cfg.seed)
    model = adapters.attach(base, cfg.adapter, cfg.train.gradient_checkpointing,
                            autocast=cfg.train.mixed_precision != "no")
    prefix_mask = attention.select_for_shared_prefix(model, cfg.adapter.virtual_tokens) if cfg.shares_prefix else None
    plan = loop.make_plan(cfg.train.model_copy(update={"max_steps": steps}), prepared, cfg.seed, 1,
                          share_prefix=cfg.shares_prefix, prefix_mask=prefix_mask)
    optimizer = optim.build_optimizer(model, cfg.train, cfg.adapter.loraplus_lr_ratio)
    scheduler = optim.build_scheduler(optimizer, cfg.train, plan.total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    times, tokens = [], []
    for step in range(steps):
        batches = loop.batches_for_step(prepared, plan, step, cfg.seed, 0, load.pad_id(tokenizer), accelerator.device)
        start = time.perf_counter()
        result = loop.train_step(model, optimizer, scheduler, accelerator, batches, cfg.train.max_grad_norm,
                                 len(prepared.task_names), cfg.train.answer_logits_only)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        tokens.append(result.tokens)
    peak = float(torch.cuda.max_memory_allocated()) if cuda else rss_bytes("VmHWM")
    kind = ("torch.cuda.max_memory_allocated (the CUDA context is not included)" if cuda else
            "process high-water resident memory (VmHWM" + (", reset before the model loaded)" if resettable
                                                          else "; not resettable here: includes data preparation)"))
    return {"steps": steps, "device": torch.cuda.get_device_name(0) if cuda else "this CPU", "peak": peak,
            "fixed": fixed, "memory_kind": kind, "step_times": times, "tokens": tokens,
            "step_s": statistics.median(times[1:] if len(times) > 1 else times)}
