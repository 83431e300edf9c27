"""Loading base models and tokenizers: the tiny offline model, a local folder, or a Hub id, one path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from multitune.config.schema import ModelConfig
from multitune.errors import UserError, hub_error
from multitune.tasks.base import Message


def resolve(cfg: ModelConfig, conversations: Sequence[Sequence[Message]], seed: int) -> str:
    """The name `from_pretrained` should load: the tiny model's cache folder (built from the training
    conversations if needed), a local folder, or the Hub id as given."""
    if cfg.name == "tiny":
        from multitune.models import tiny

        return str(tiny.build_or_load(cfg.tiny, conversations, seed))
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
    return tokenizer


def pad_id(tokenizer: Any) -> int:
    """The id used for padding: the tokenizer's pad token, else its end-of-sequence token (Llama 3 has no
    pad token; padded positions carry no loss and no attention, so any id works)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    eos = tokenizer.eos_token_id
    return int(eos[0] if isinstance(eos, list) else eos)


def torch_dtype(cfg: ModelConfig) -> torch.dtype:
    if cfg.dtype == "auto":
        gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if gpu_bf16 else torch.float32
    return getattr(torch, cfg.dtype)


def load_model(name: str, cfg: ModelConfig) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            name,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            dtype=torch_dtype(cfg),
            attn_implementation=cfg.attn_implementation,
        )
    except Exception as e:
        raise hub_error(e, "model", name) from None
