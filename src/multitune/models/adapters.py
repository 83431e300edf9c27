"""Trainable parameters through peft: LoRA (DoRA, QLoRA, rsLoRA, PiSSA / OLoRA starts), (IA)^3, prompt and
prefix tuning (`virtual.py`), or the whole model. Each method is a peft config here; the training loop,
evaluation and saving are the same for all."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from multitune.config.adapter import LORA_FAMILY, VIRTUAL_TOKENS, AdapterConfig

ATTENTION_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP_MODULES = ["gate_proj", "up_proj", "down_proj"]


def target_modules(cfg: AdapterConfig) -> str | list[str]:
    if cfg.target_modules == "attention":
        return list(ATTENTION_MODULES)
    return cfg.target_modules  # "all-linear" is understood by peft itself, or an explicit list


def attach(model: Any, cfg: AdapterConfig, gradient_checkpointing: bool = False, autocast: bool = False) -> Any:
    """Return the model to train: wrapped with fresh adapters (`peft_config` says which), or as is with
    every weight trainable.

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
    from peft import get_peft_model

    from multitune.models import virtual  # imports peft, which loads only when adapters are used

    if cfg.method == "qlora":
        _freeze_4bit_base(model)
    if gradient_checkpointing:
        _checkpoint_activations(model)
    config = peft_config(cfg, getattr(model, "name_or_path", None))
    with _peft_probe_warning_ignored():
        if cfg.method not in VIRTUAL_TOKENS:
            wrapped = get_peft_model(model, config)
        else:
            wrapped = virtual.wrap(model, config)
    if cfg.method == "prefix_tuning" and cfg.prompt_init_text:  # peft starts only prompt tuning from a text
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
        virtual.prefix_from_text(wrapped, tokenizer(cfg.prompt_init_text, add_special_tokens=False)["input_ids"])
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

def peft_config(cfg: AdapterConfig, tokenizer_path: str | None = None) -> Any:
    """The peft config of the method. `tokenizer_path`: where prompt tuning's `prompt_init_text` is
    tokenised (the base model's folder)."""
    import peft

    if cfg.method in LORA_FAMILY:
        return peft.LoraConfig(
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=target_modules(cfg),
            modules_to_save=list(cfg.modules_to_save) or None, use_dora=cfg.method == "dora",
            use_rslora=cfg.use_rslora, init_lora_weights=True if cfg.lora_init == "default" else cfg.lora_init,
            task_type="CAUSAL_LM",
        )
    if cfg.method == "ia3":
        # Named, not "all-linear": peft saves that expanded to full module paths, and then refuses to load
        # the adapter, its feedforward names being no subset of those paths.
        targets = ATTENTION_MODULES + MLP_MODULES if cfg.target_modules == "all-linear" else target_modules(cfg)
        feedforward = [m for m in MLP_MODULES if m in targets]
        return peft.IA3Config(target_modules=targets, feedforward_modules=feedforward,
                              modules_to_save=list(cfg.modules_to_save) or None, task_type="CAUSAL_LM")
    if cfg.method == "prefix_tuning":
        return peft.PrefixTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, task_type="CAUSAL_LM")
    text = cfg.prompt_init_text
    return peft.PromptTuningConfig(
        num_virtual_tokens=cfg.num_virtual_tokens, task_type="CAUSAL_LM",
        prompt_tuning_init=peft.PromptTuningInit.TEXT if text else peft.PromptTuningInit.RANDOM,
        prompt_tuning_init_text=text, tokenizer_name_or_path=tokenizer_path if text else None,
    )


def load_adapter(base: Any, adapter_dir: str | Path) -> Any:
    """`PeftModel.from_pretrained(base, adapter_dir)`: a saved adapter on its base model (a prompt- or
    prefix-tuning adapter as `virtual.VirtualTokensModel`, whose forward takes every batch layout)."""
    from peft import PeftConfig, PeftModel

    from multitune.models import virtual

    with _peft_probe_warning_ignored():
        if PeftConfig.from_pretrained(str(adapter_dir)).is_prompt_learning:
            return virtual.load(base, str(adapter_dir))
        return PeftModel.from_pretrained(base, str(adapter_dir))


def initial_weights(model: Any, cfg: AdapterConfig) -> dict[str, torch.Tensor] | None:
    """A copy of the LoRA matrices as PiSSA / OLoRA set them, which `save_final` needs to convert the
    trained adapter into one for the original base; None for every other start. Call right after
    `attach` (the initialisation is a pure function of the base's weights, so a resumed run gets the
    same)."""
    if cfg.lora_init == "default":
        return None
    # clone: on a CPU `full_tensor` shares storage with the parameter, which training changes in place
    return {n: full_tensor(p).clone() for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}


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


def full_tensor(p: torch.Tensor) -> torch.Tensor:
    """A parameter's whole value on the CPU. Under FSDP a parameter is a DTensor holding this process's
    shard; `full_tensor()` gathers it (a collective: every process must call it)."""
    if hasattr(p, "full_tensor"):
        p = p.full_tensor()
    return p.detach().cpu().contiguous()


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

def save_final(model: Any, tokenizer: Any, folder: Path, state_dict: dict[str, torch.Tensor],
               initial: dict[str, torch.Tensor] | None = None) -> None:
    """Write the result to `folder`: a peft adapter (adapter_config.json + safetensors) for adapters, or
    the whole model for full fine-tuning; the tokenizer goes beside it either way.

    `state_dict` comes from `gather_for_saving`, so every tensor has its full shape even when the
    model is sharded (saving the live parameters there would write each process's 1/N slice).
    `initial` (from `initial_weights`): the run started from PiSSA / OLoRA matrices and trained on a base
    with them subtracted; the adapter is written as the rank-2r LoRA of the original base that it equals
    (`from_mutated_start`), which `PeftModel.from_pretrained` and every export then take like any other.
    """
    model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    if initial is not None:
        # peft's own conversion (save_pretrained's path_initial_model_for_weight_conversion) reads the
        # start from the state_dict it is given, which holds only the trained weights: done here instead.
        from peft import get_peft_model_state_dict
        from safetensors.torch import load_file, save_file

        weights = folder / "adapter_model.safetensors"
        start = get_peft_model_state_dict(model, state_dict=initial)
        save_file(from_mutated_start(load_file(str(weights)), start), str(weights), metadata={"format": "pt"})
        config_path = folder / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config.update(r=2 * config["r"], init_lora_weights=True,  # alpha / r (or / sqrt(r)) stays the same
                      lora_alpha=config["lora_alpha"] * (2**0.5 if config.get("use_rslora") else 2))
        config_path.write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(folder)


def from_mutated_start(trained: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The LoRA of the original base W equal to a LoRA (A, B) trained on W - s B0 A0 from the start (A0, B0):
    W + s (B A - B0 A0) = W + s [B | -B0] [A ; A0], rank 2r (the scale s kept by doubling alpha). Other
    tensors (modules_to_save) pass unchanged.

    >>> a, b, a0, b0 = (torch.full(shape, v) for shape, v in (((1, 2), 1.0), ((2, 1), 2.0), ((1, 2), 3.0), ((2, 1), 4.0)))
    >>> out = from_mutated_start({"x.lora_A.weight": a, "x.lora_B.weight": b}, {"x.lora_A.weight": a0, "x.lora_B.weight": b0})
    >>> bool(torch.equal(out["x.lora_B.weight"] @ out["x.lora_A.weight"], b @ a - b0 @ a0))
    True
    """
    out = dict(trained)
    for name, value in trained.items():
        if ".lora_A." in name:
            out[name] = torch.cat([value, start[name]], dim=0)
        elif ".lora_B." in name:
            out[name] = torch.cat([value, -start[name]], dim=1)
    return out
