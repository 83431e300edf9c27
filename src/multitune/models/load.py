"""Loading base models and tokenizers: the tiny offline model, a local folder, or a Hub id, one path."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from multitune.config import device
from multitune.config.schema import ModelConfig, QuantizationConfig, RunConfig
from multitune.errors import UserError, hub_error
from multitune.models import gguf
from multitune.runtime import BF16_FLAGS, cpu_bf16_units
from multitune.tasks.base import Message


def resolve(cfg: ModelConfig, conversations: Sequence[Sequence[Message]], seed: int) -> str:
    """The name `from_pretrained` should load: the tiny model's cache folder (built from the training
    conversations if needed), the folder converted from a GGUF file (`models/gguf.py`), a local folder,
    or the Hub id as given."""
    if cfg.name == "tiny":
        from multitune.models import tiny

        return str(tiny.build_or_load(cfg.tiny, conversations, seed))
    if cfg.is_gguf:
        return str(gguf.converted_folder(cfg))
    path = Path(cfg.name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} has no config.json: not a Hugging Face model folder",
                            fix="point model.name at a folder written by save_pretrained, or at a Hub id")
        return str(path)
    return cfg.name


def load_tokenizer(name: str, cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except Exception as e:
        raise hub_error(e, "model", name) from None
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"the tokenizer of {name!r} has no chat template",
            fix="use an instruct/chat model (e.g. meta-llama/Llama-3.1-8B-Instruct), whose tokenizer has one",
        )
    if cfg.template_system_prompt == "suppress":
        tokenizer.chat_template = suppress_default_system(tokenizer.chat_template)
    return tokenizer


# Prepended to a chat template: a conversation without a system turn gets an empty one, so a template that
# supplies its own default system prompt has nothing to fill in. The rule travels inside the template, so
# the tokenizer saved with the adapter (chat, serve, merge, a GGUF export) applies it too.
SUPPRESS_DEFAULT_SYSTEM = (
    "{%- if messages and messages[0]['role'] != 'system' -%}"
    "{%- set messages = [{'role': 'system', 'content': ''}] + messages -%}"
    "{%- endif -%}"
)


def suppress_default_system(template: Any) -> str:
    """`template` with `SUPPRESS_DEFAULT_SYSTEM` in front (once)."""
    if not isinstance(template, str):
        raise UserError("model.template_system_prompt=suppress needs a single chat template; this tokenizer "
                        "has several named ones", fix="set model.template_system_prompt=keep")
    return template if template.startswith(SUPPRESS_DEFAULT_SYSTEM) else SUPPRESS_DEFAULT_SYSTEM + template


def pad_id(tokenizer: Any) -> int:
    """The id used for padding: the tokenizer's pad token, else its end-of-sequence token (Llama 3 has no
    pad token; padded positions carry no loss and no attention, so any id works)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    eos = tokenizer.eos_token_id
    return int(eos[0] if isinstance(eos, list) else eos)


def for_this_machine(cfg: RunConfig) -> RunConfig:
    """`cfg` with its device-dependent settings (`auto` precision and dtype, `null` share_prefix) decided
    for this machine's device (config/device.py)."""
    cuda = torch.cuda.is_available()
    return device.for_device(cfg, gpu=cuda, bf16=cuda and torch.cuda.is_bf16_supported())


def torch_dtype(cfg: ModelConfig) -> torch.dtype:
    """The dtype to load weights in; `auto` (a config not resolved by `for_this_machine`) as float32 on a
    CPU and bfloat16 on a GPU with bf16."""
    if cfg.dtype == "auto":
        gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if gpu_bf16 else torch.float32
    return getattr(torch, cfg.dtype)


def check_hardware(cfg: RunConfig) -> None:
    """Refuse, before anything is loaded, what this machine cannot run: all problems at once."""
    cuda = torch.cuda.is_available()
    bf16_ok = not cuda or torch.cuda.is_bf16_supported()  # CPUs run bf16 (slowly on old ones)
    wants_bf16 = [
        name for name, on in [
            ("train.mixed_precision=bf16", cfg.train.mixed_precision == "bf16"),
            ("model.dtype=bfloat16", cfg.model.dtype == "bfloat16"),
            ("quantization.compute_dtype=bfloat16",
             cfg.adapter.method == "qlora" and cfg.quantization.compute_dtype == "bfloat16"),
        ] if on
    ]
    problems = []
    if wants_bf16 and not bf16_ok:
        problems.append(f"this GPU has no bfloat16 support (compute capability below 8.0), needed by "
                        f"{', '.join(wants_bf16)}: use float16 / fp16 instead")
    if cfg.train.mixed_precision == "fp16" and not cuda:
        problems.append("train.mixed_precision=fp16 needs a CUDA GPU: use bf16 (which CPUs support) or no")
    if cfg.model.attn_implementation == "flash_attention_2":
        if not cuda:
            problems.append("model.attn_implementation=flash_attention_2 needs a CUDA GPU: use sdpa")
        elif importlib.util.find_spec("flash_attn") is None:
            problems.append("model.attn_implementation=flash_attention_2 needs the flash-attn package "
                            "(pip install flash-attn --no-build-isolation), or use sdpa")
    if cfg.adapter.method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        problems.append("adapter.method=qlora needs bitsandbytes: pip install 'multitune[qlora]'")
    if problems:
        raise UserError("this machine cannot run the config as it is:\n" + "\n".join(f"  - {p}" for p in problems))
    if wants_bf16 and not cuda and cpu_bf16_units() is False:
        print(f"warning: this CPU has no bfloat16 units (no {' or '.join(BF16_FLAGS)} in /proc/cpuinfo), so "
              f"{', '.join(wants_bf16)} runs its matmuls on a slow path (180x slower than float32 on a 2-core "
              "AVX2 machine, docs/benchmarks.md): on this machine use train.mixed_precision=no and float32",
              file=sys.stderr, flush=True)


def quantization_config(q: QuantizationConfig) -> Any:
    """The bitsandbytes 4-bit config for QLoRA."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
        bnb_4bit_quant_storage=getattr(torch, q.storage_dtype),
    )


def load_model(name: str, cfg: ModelConfig, quantization: QuantizationConfig | None = None,
               device: torch.device | None = None, empty: bool = False) -> Any:
    """Load the base model; with `quantization`, in 4 bits on `device` (bitsandbytes quantises while
    loading, so the weights must land on their final device). `empty`: the model's shape on the meta
    device, no weight read (FSDP's memory-efficient loading: process 0 reads them and broadcasts its
    shards to the others once the model is sharded, `train/shard.py`)."""
    from transformers import AutoModelForCausalLM

    if empty:
        return _empty_model(name, cfg)
    kwargs: dict[str, Any] = {"dtype": torch_dtype(cfg)}
    if quantization is not None and (device is None or device.type == "cpu"):
        _refuse_shapes_the_cpu_4bit_kernel_cannot_take(name, cfg)
    if quantization is not None:
        kwargs.update(quantization_config=quantization_config(quantization), dtype=getattr(torch, quantization.compute_dtype),
                      device_map={"": device if device is not None else "cpu"})
    try:
        return AutoModelForCausalLM.from_pretrained(
            name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
            attn_implementation=cfg.attn_implementation, **kwargs,
        )
    except Exception as e:
        raise hub_error(e, "model", name) from None


def _empty_model(name: str, cfg: ModelConfig) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        raise hub_error(e, "model", name) from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch_dtype(cfg), trust_remote_code=cfg.trust_remote_code,
                                                attn_implementation=cfg.attn_implementation)


# bitsandbytes' CPU 4-bit kernel repacks each quantised weight for evaluation in blocks of 32 output rows
# and asserts (`N must be divisible by block_n`) on any other layer width.
CPU_4BIT_BLOCK = 32


def _refuse_shapes_the_cpu_4bit_kernel_cannot_take(name: str, cfg: ModelConfig) -> None:
    """QLoRA on a CPU: refuse, before any weight loads, a model with a layer width the kernel cannot take."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        raise hub_error(e, "model", name) from None
    heads = getattr(config, "num_attention_heads", 0) or 0
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else 0)
    widths = {
        "hidden_size": getattr(config, "hidden_size", 0),
        "intermediate_size": getattr(config, "intermediate_size", 0),
        "num_attention_heads x head_dim": heads * head_dim,
        "num_key_value_heads x head_dim": (getattr(config, "num_key_value_heads", None) or heads) * head_dim,
    }
    odd = [f"{k} = {v}" for k, v in widths.items() if v and v % CPU_4BIT_BLOCK]
    if odd:
        raise UserError(
            f"adapter.method=qlora on a CPU cannot quantise this model: bitsandbytes' CPU 4-bit kernel needs "
            f"every layer width to be a multiple of {CPU_4BIT_BLOCK}, and {', '.join(odd)}",
            where=f"model {name}", fix="train with adapter.method=lora on this CPU, or run QLoRA on a CUDA GPU",
        )
