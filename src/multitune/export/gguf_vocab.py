"""The tokenizer of a GGUF file: llama.cpp's byte-level BPE ("gpt2") vocabulary, merges, special tokens,
pre-tokenizer name and chat template, read off a transformers fast tokenizer.

llama.cpp does not run the tokenizer's own pre-tokenizer; it knows a fixed list of them by name
(`tokenizer.ggml.pre`) and carries their split patterns in C++. So the pre-tokenizer is recognised here
from its exact definition, and one that is not on the list is refused: a wrong name would split text
differently from training and quietly change every prompt's tokens.
"""

from __future__ import annotations

import json
from typing import Any

from multitune.errors import UserError

# Llama 3's split pattern (the tiny model uses it too); llama.cpp calls this pre-tokenizer "llama-bpe".
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
# llama.cpp's token types (gguf.TokenType): a normal piece, a special (control) token, a non-special added one,
# and a slot of the embedding that no token uses.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def pre_tokenizer_name(pre: dict[str, Any] | None) -> str | None:
    """llama.cpp's name for a `tokenizers` pre-tokenizer (its JSON form), or None when it has none.

    >>> pre_tokenizer_name({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True})
    'gpt-2'
    """
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [s["type"] for s in steps]
    if kinds == ["ByteLevel"] and steps[0]["use_regex"] and not steps[0]["add_prefix_space"]:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0]["individual_digits"] and steps[1]["use_regex"]:
        return "smollm"  # SmolLM: every digit its own piece, then GPT-2's split
    if kinds == ["Split", "ByteLevel"] and not steps[1]["use_regex"] and steps[0]["behavior"] == "Isolated":
        pattern = steps[0]["pattern"].get("Regex")
        return {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}.get(pattern)
    return None


def vocab_fields(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """Everything `write_vocab` writes, as plain values (tests read them): pre, tokens, token_types, merges,
    special ids, add_bos, chat_template. `vocab_size` is the embedding's row count, which may exceed the
    tokenizer's: the extra rows get unused placeholder tokens, as llama.cpp's converter names them."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str()) if getattr(tokenizer, "is_fast", False) else {}
    model = spec.get("model", {})
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise UserError(f"the tokenizer is not a byte-level BPE ({model.get('type') or type(tokenizer).__name__}): "
                        "the GGUF export writes that kind only (Llama 3, SmolLM2, the tiny model)",
                        fix="use `multitune merge` and llama.cpp's convert_hf_to_gguf.py for this model")
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    if pre is None:
        raise UserError("llama.cpp knows no pre-tokenizer that matches this tokenizer's: "
                        f"{json.dumps(spec.get('pre_tokenizer'))[:200]}",
                        fix="use `multitune merge` and llama.cpp's convert_hf_to_gguf.py, which lists more")
    tokens, types = _tokens(tokenizer, vocab_size)
    return {
        "pre": pre, "tokens": tokens, "token_types": types,
        "merges": [m if isinstance(m, str) else " ".join(m) for m in model["merges"]],
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "unk_token_id": tokenizer.unk_token_id, "pad_token_id": tokenizer.pad_token_id,
        "add_bos": adds_bos(tokenizer), "chat_template": chat_template(tokenizer),
    }


def write_vocab(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    """Add the `tokenizer.*` keys of `vocab_fields` to a `gguf.GGUFWriter`."""
    f = vocab_fields(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(f["pre"])
    writer.add_token_list(f["tokens"])
    writer.add_token_types(f["token_types"])
    writer.add_token_merges(f["merges"])
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
        if f[key] is not None:
            add(f[key])
    writer.add_add_bos_token(f["add_bos"])
    writer.add_add_eos_token(False)
    if f["chat_template"]:
        writer.add_chat_template(f["chat_template"])


def _tokens(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken, for tokens added beside the BPE vocabulary
    if max(by_id) >= vocab_size:
        raise UserError(f"the tokenizer has ids up to {max(by_id)} but the model's embedding only "
                        f"{vocab_size} rows", fix="resize the model's embeddings to the tokenizer before training")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(CONTROL if added[i].special else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    return tokens, types


def adds_bos(tokenizer: Any) -> bool:
    """Whether encoding text adds the begin-of-text token itself (llama.cpp's `add_bos_token`). A chat template
    that writes it (Llama 3's, the tiny model's) goes with a tokenizer that does not, or prompts get two."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def chat_template(tokenizer: Any) -> str | None:
    """The tokenizer's chat template (the default one when it has several), or None."""
    template = tokenizer.chat_template
    if isinstance(template, dict):
        return template.get("default")
    return template
