"""Trainable parameters: LoRA adapters through peft, or the whole model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from multitune.config.schema import AdapterConfig

ATTENTION_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]


def target_modules(cfg: AdapterConfig) -> str | list[str]:
    if cfg.target_modules == "attention":
        return list(ATTENTION_MODULES)
    return cfg.target_modules  # "all-linear" is understood by peft itself, or an explicit list


def attach(model: Any, cfg: AdapterConfig) -> Any:
    """Return the model to train: wrapped with fresh LoRA adapters, or as is with every weight trainable."""
    if cfg.method == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target_modules(cfg),
        modules_to_save=list(cfg.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def save_final(model: Any, tokenizer: Any, folder: Path) -> None:
    """Write the result to `folder`: a peft adapter (adapter_config.json + safetensors) for LoRA, or the
    whole model for full fine-tuning; the tokenizer goes beside it either way."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
