"""AdamW over the trainable parameters and a warmup + decay schedule from transformers."""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from multitune.config.schema import TrainConfig

# Our schedule names -> transformers.get_scheduler names (ours are the ones users type; "constant"
# still warms up when warmup_ratio > 0).
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def build_optimizer(model: Any, cfg: TrainConfig, b_lr_ratio: float | None = None) -> torch.optim.Optimizer:
    """AdamW; weight decay applies to matrices only (not to norms' scales or biases). `b_lr_ratio`
    (LoRA+, `adapter.loraplus_lr_ratio`): LoRA's B matrices learn at learning_rate x this ratio, in
    groups of their own after the others (the first group keeps the base rate, which the logs show; the
    schedule scales every group alike)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    groups = []
    for fast in (False, True) if b_lr_ratio is not None else (False,):
        members = [p for n, p in named if (b_lr_ratio is not None and is_lora_b(n)) == fast]
        lr = cfg.learning_rate * (b_lr_ratio if fast and b_lr_ratio is not None else 1.0)
        groups += [{"params": [p for p in members if p.ndim >= 2], "weight_decay": cfg.weight_decay, "lr": lr},
                   {"params": [p for p in members if p.ndim < 2], "weight_decay": 0.0, "lr": lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate, fused=can_fuse(params) or None)


def is_lora_b(name: str) -> bool:
    """Whether a parameter is a LoRA B matrix (peft names them `...lora_B.<adapter>.weight`).

    >>> is_lora_b("base_model.model.model.layers.0.mlp.up_proj.lora_B.default.weight"), is_lora_b("x.lora_A.default.weight")
    (True, False)
    """
    return ".lora_B." in name or ".lora_embedding_B." in name


def can_fuse(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW (one kernel for all tensors: 9.6 against 39 ms a step for SmolLM2's
    LoRA on a 2-core CPU, docs/benchmarks.md) takes these parameters: floating point, all on one CPU or
    CUDA device, and not sharded by FSDP (accelerate swaps those for DTensors after the optimizer is
    built), where torch's default (foreach) stays."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
        return False
    devices = {p.device for p in params}
    return (len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda")
            and all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params))


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    return math.ceil(cfg.warmup_ratio * total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> Any:
    from transformers import get_scheduler

    return get_scheduler(
        SCHEDULES[cfg.lr_scheduler], optimizer,
        num_warmup_steps=warmup_steps(cfg, total_steps), num_training_steps=total_steps,
    )
