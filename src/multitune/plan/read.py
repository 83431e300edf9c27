"""Where a model's shape comes from: a local folder's config.json, a GGUF file's header, a Hub id's
config.json (one small download, or the local cache), or the table of published shapes when offline.
Weights are never read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from multitune.errors import UserError, hub_error
from multitune.models.gguf_header import read_header
from multitune.plan.known import KNOWN_SHAPES, known_config
from multitune.plan.shapes import ModelShape, from_hf_config


def read_shape(name: str, revision: str | None = None, trust_remote_code: bool = False) -> ModelShape:
    """The shape of the model `name`: a folder with config.json, a .gguf file, or a Hub id."""
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return from_hf_config(gguf_config(path), source=f"GGUF header of {path}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} has no config.json: the model's shape cannot be read",
                            fix="point model.name at a folder written by save_pretrained, or at a Hub id")
        return from_hf_config(_auto_config(str(path), None, trust_remote_code), source=f"{path}/config.json")
    try:
        config = _auto_config(name, revision, trust_remote_code)
    except UserError as e:
        known = known_config(name)
        if known is None:
            raise UserError(
                f"cannot read the config.json of model {name!r}: {e.what}",
                fix=f"{e.fix or 'check the id'}; or give a local folder with its config.json; shapes known "
                    f"offline: {', '.join(sorted(KNOWN_SHAPES))}",
            ) from None
        from transformers import LlamaConfig

        shape = from_hf_config(LlamaConfig(**known), source="the built-in table of published shapes")
        note = (f"{name}'s config.json is not cached and the Hub is not reachable: the published shape from "
                "multitune's table of known models is used (weights are never needed)")
        return _with_note(shape, note)
    return from_hf_config(config, source=f"{name}/config.json (Hugging Face Hub or its cache)")


def _with_note(shape: ModelShape, note: str) -> ModelShape:
    from dataclasses import replace

    return replace(shape, notes=(*shape.notes, note))


def _auto_config(name: str, revision: str | None, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise hub_error(e, "model", name) from None


def gguf_config(path: Path) -> Any:
    """A transformers LlamaConfig from a GGUF file's header (metadata only; tensors are not read except
    for their names, to tell whether the output head is tied to the embedding). The header is checked by
    `read_header` first: an adapter or a file without a tokenizer is refused by name."""
    from transformers import LlamaConfig

    header = read_header(path)
    fields, arch = header.fields, header.architecture
    if arch not in ("llama", "mistral", "qwen2"):
        raise UserError(f"GGUF architecture {arch!r} is not a Llama-family decoder the planner can read",
                        where=str(path), fix="plan from the model's Hugging Face folder (config.json) instead")
    needed = [f"{arch}.{k}" for k in ("attention.head_count", "embedding_length", "feed_forward_length",
                                      "block_count")]
    if missing := [k for k in needed if k not in fields]:
        raise UserError(f"the GGUF header lacks {', '.join(missing)}, so the model's shape is unknown",
                        where=str(path), fix="plan from the model's Hugging Face folder (config.json) instead")
    heads = int(fields[f"{arch}.attention.head_count"])
    return LlamaConfig(
        hidden_size=int(fields[f"{arch}.embedding_length"]),
        intermediate_size=int(fields[f"{arch}.feed_forward_length"]),
        num_hidden_layers=int(fields[f"{arch}.block_count"]), num_attention_heads=heads,
        num_key_value_heads=int(fields.get(f"{arch}.attention.head_count_kv", heads)),
        vocab_size=int(fields.get(f"{arch}.vocab_size") or header.vocab_size),
        tie_word_embeddings="output.weight" not in header.tensor_names,
    )
