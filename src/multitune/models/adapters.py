"""Trainable parameters: LoRA / DoRA / QLoRA adapters through peft, or the whole model."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from multitune.config.schema import AdapterConfig

ATTENTION_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]


def target_modules(cfg: AdapterConfig) -> str | list[str]:
    if cfg.target_modules == "attention":
        return list(ATTENTION_MODULES)
    return cfg.target_modules  # "all-linear" is understood by peft itself, or an explicit list


def attach(model: Any, cfg: AdapterConfig, gradient_checkpointing: bool = False, autocast: bool = False) -> Any:
    """Return the model to train: wrapped with fresh adapters, or as is with every weight trainable.

    Gradient checkpointing is non-reentrant: the reentrant kind needs inputs that require grad, which a
    frozen embedding under LoRA does not give, and it breaks with DDP's unused-parameter checks.
    `autocast`: the run computes under bf16/fp16 autocast (`train.mixed_precision`), which then decides
    the adapters' matmul dtype, so peft's cast of each adapted layer's input to the adapters' float32 is
    turned off (`_autocast_decides`).
    """
    if cfg.method == "full":
        model.requires_grad_(True)
        if gradient_checkpointing:
            _checkpoint_activations(model)
        return model
    from peft import LoraConfig, get_peft_model

    if cfg.method == "qlora":
        _freeze_4bit_base(model)
    if gradient_checkpointing:
        _checkpoint_activations(model)
    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target_modules(cfg),
        modules_to_save=list(cfg.modules_to_save) or None,
        use_dora=cfg.method == "dora",
        use_rslora=cfg.use_rslora,
        task_type="CAUSAL_LM",
    )
    with _peft_probe_warning_ignored():
        wrapped = get_peft_model(model, lora)
    if autocast:
        _autocast_decides(wrapped)
    return wrapped


def _freeze_4bit_base(model: Any) -> None:
    """Freeze a 4-bit base for QLoRA, leaving every dtype as loaded. peft's `prepare_model_for_kbit_training`
    also casts every 16-bit parameter (norms, embeddings, head) to float32, after which each RMSNorm
    returns float32 and the whole residual stream runs and is kept in float32: twice the activation
    memory and float32 element-wise work per layer, for nothing the bf16 compute dtype does not hold.
    Its other step, input gradients for reentrant checkpointing, is not needed: checkpointing here is
    non-reentrant."""
    model.requires_grad_(False)


def _autocast_decides(model: Any) -> None:
    """Under autocast, let the adapters see their layer's input as it comes (bf16) instead of peft's
    float32 copy of it: autocast runs their matmuls in bf16 either way, so the copy only costs an
    input-sized float32 tensor per adapted layer (and with dropout, keeps it for the backward pass).
    `cast_input_dtype_enabled` is the per-layer switch peft documents for this (peft.helpers)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False


def load_adapter(base: Any, adapter_dir: str | Path) -> Any:
    """`PeftModel.from_pretrained(base, adapter_dir)`: a saved adapter on its base model."""
    from peft import PeftModel

    with _peft_probe_warning_ignored():
        return PeftModel.from_pretrained(base, str(adapter_dir))


@contextlib.contextmanager
def _peft_probe_warning_ignored() -> Iterator[None]:
    """peft (0.21) reads `model.is_gradient_checkpointing` whenever it wraps a model, a property
    transformers 5.24 deprecated for `is_activation_checkpointing`: a FutureWarning only peft can fix,
    shown to every user. Exactly that message is ignored, during the wrapping only; any other warning
    (and this one, raised by anything else) is seen."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def _checkpoint_activations(model: Any) -> None:
    # transformers 5 renamed gradient checkpointing to activation checkpointing; accept both.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def gather_for_saving(model: Any, trainable_only: bool, keep: bool = True) -> dict[str, torch.Tensor]:
    """The weights to save, whole, keyed by parameter name. Call on every process: a sharded parameter is
    gathered (a collective), one at a time; only where `keep` (the process that writes) is it copied to
    the CPU and returned, so the others never hold more than one whole parameter. {} where not `keep`."""
    out = {}
    for n, p in model.named_parameters():
        if p.requires_grad or not trainable_only:
            whole = p.full_tensor() if hasattr(p, "full_tensor") else p
            if keep:
                out[n] = whole.detach().cpu().contiguous()
            del whole
    return out


def save_final(model: Any, tokenizer: Any, folder: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Write the result to `folder`: a peft adapter (adapter_config.json + safetensors) for adapters, or
    the whole model for full fine-tuning; the tokenizer goes beside it either way.

    `state_dict` comes from `gather_for_saving`, so every tensor has its full shape even when the
    model is sharded (saving the live parameters there would write each process's 1/N slice).
    """
    model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(folder)
