"""What a GGUF file holds, read from its header alone, and the refusal of any GGUF that cannot be a base.

transformers builds a model and its tokenizer from a GGUF's metadata. Given a file that is not a chat model
(a LoRA adapter written by llama.cpp's `convert_lora_to_gguf.py`, a vision projector, a tensor dump) it
fails deep inside, e.g. "Cannot build a tokenizer from a GGUF file stating tokenizer None". So every path
that hands a GGUF to transformers (`models/gguf.py` converting a base, `multitune plan` reading one) reads
the header here first and refuses by name: an adapter, not a model; no tokenizer; an architecture or a
tokenizer type transformers cannot read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multitune.errors import UserError

GGUF_MAGIC = b"GGUF"
# The vocabulary's long arrays: read only where needed (their length is the vocabulary size).
VOCAB_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges")
OTHER_SOURCES = "or the model's Hugging Face folder or Hub id"


@dataclass(frozen=True)
class GgufHeader:
    path: Path
    architecture: str
    fields: dict[str, Any]
    """Every metadata value except the vocabulary's long arrays (`VOCAB_ARRAYS`)."""
    vocab_size: int
    """Entries of `tokenizer.ggml.tokens`."""
    tensor_names: tuple[str, ...]


def read_header(path: Path) -> GgufHeader:
    """The header of the GGUF model file `path`, after refusing (`UserError`, naming the file) one that is
    not GGUF, is damaged, is an adapter or another kind of file than a model, has an architecture
    transformers cannot read from GGUF, or carries no tokenizer transformers can build."""
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise UserError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)",
                            fix="point model.name at a .gguf file written by llama.cpp's converter or Ollama")
    try:
        import gguf
    except ImportError:
        raise UserError("reading a GGUF model needs the gguf package", fix="pip install gguf") from None
    try:
        reader = gguf.GGUFReader(path)
        fields = {k: f.contents() for k, f in reader.fields.items() if k not in VOCAB_ARRAYS}
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        header = GgufHeader(path, str(fields.get("general.architecture")), fields,
                            len(tokens.data) if tokens is not None else 0, tuple(t.name for t in reader.tensors))
    except Exception as e:  # a truncated or damaged file
        raise UserError(f"{path} could not be read as GGUF: {e}",
                        fix="check the file is complete (its size and checksum against the source)") from None
    _refuse_other_kinds(header)
    _refuse_unreadable(header)
    return header


def _refuse_other_kinds(h: GgufHeader) -> None:
    kind = h.fields.get("general.type", "model")  # files from before the key existed are models
    if kind == "adapter":
        adapter = h.fields.get("adapter.type", "lora")
        raise UserError(f"this GGUF is an adapter ({adapter} for a {h.architecture} model), not a model",
                        where=str(h.path),
                        fix="give its base as model.name (the model the adapter was made for, as a GGUF file "
                            f"{OTHER_SOURCES}); to start from the adapted model, merge the adapter into its base "
                            "first (llama.cpp's llama-export-lora)")
    if kind != "model":
        raise UserError(f"this GGUF is a {kind!r} file, not a language model", where=str(h.path),
                        fix=f"point model.name at a GGUF chat model, {OTHER_SOURCES}")


def _refuse_unreadable(h: GgufHeader) -> None:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if h.architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise UserError(f"this GGUF holds a {h.architecture!r} model, which transformers cannot read from GGUF",
                        where=str(h.path),
                        fix=f"use a model of a supported architecture ({', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}) "
                            f"{OTHER_SOURCES}")
    tokenizer = h.fields.get("tokenizer.ggml.model")
    if tokenizer is None or not h.vocab_size:
        raise UserError("this GGUF has no tokenizer (its header holds no tokenizer.ggml.model and tokens), so "
                        "no text can be encoded for it", where=str(h.path),
                        fix=f"use the model's full GGUF as llama.cpp's converter writes it (with its vocabulary), "
                            f"{OTHER_SOURCES}")
    known = _tokenizer_types()
    if known and tokenizer not in known:
        raise UserError(f"this GGUF's tokenizer is of type {tokenizer!r}, which transformers cannot build "
                        f"(it builds {', '.join(sorted(known))})", where=str(h.path),
                        fix="use the model's Hugging Face folder or Hub id, whose tokenizer files load directly")


def _tokenizer_types() -> set[str]:
    """The `tokenizer.ggml.model` values transformers builds a tokenizer from (empty: cannot tell)."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_TYPES
    except ImportError:  # moved in another transformers: leave the refusal to transformers
        return set()
    return set(GGUF_TOKENIZER_TYPES)
