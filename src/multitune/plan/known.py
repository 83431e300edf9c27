"""Published shapes of common Llama-family models, for planning offline when a Hub id's config.json is
neither cached nor downloadable. Each entry is the model card's config.json (hidden size, MLP width,
layers, heads, key/value heads, vocabulary, tied embeddings); the plan says when it used one."""

from __future__ import annotations

# (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
#  vocab_size, tie_word_embeddings, head_dim)
_LLAMA_3_8B = (4096, 14336, 32, 32, 8, 128256, False, 128)
_LLAMA_3_70B = (8192, 28672, 80, 64, 8, 128256, False, 128)
_LLAMA_32_1B = (2048, 8192, 16, 32, 8, 128256, True, 64)
_LLAMA_32_3B = (3072, 8192, 28, 24, 8, 128256, True, 128)
_SMOLLM2_135M = (576, 1536, 30, 9, 3, 49152, True, 64)

KNOWN_SHAPES: dict[str, tuple[int, int, int, int, int, int, bool, int]] = {
    "meta-llama/Meta-Llama-3-8B": _LLAMA_3_8B,
    "meta-llama/Meta-Llama-3-8B-Instruct": _LLAMA_3_8B,
    "meta-llama/Llama-3.1-8B": _LLAMA_3_8B,
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA_3_8B,
    "meta-llama/Meta-Llama-3-70B-Instruct": _LLAMA_3_70B,
    "meta-llama/Llama-3.1-70B": _LLAMA_3_70B,
    "meta-llama/Llama-3.1-70B-Instruct": _LLAMA_3_70B,
    "meta-llama/Llama-3.3-70B-Instruct": _LLAMA_3_70B,
    "meta-llama/Llama-3.2-1B": _LLAMA_32_1B,
    "meta-llama/Llama-3.2-1B-Instruct": _LLAMA_32_1B,
    "meta-llama/Llama-3.2-3B": _LLAMA_32_3B,
    "meta-llama/Llama-3.2-3B-Instruct": _LLAMA_32_3B,
    "HuggingFaceTB/SmolLM2-135M-Instruct": _SMOLLM2_135M,
}


def known_config(name: str) -> dict | None:
    """The config.json fields of a known model id (case-insensitive), or None."""
    for key, (h, i, n, heads, kv, vocab, tied, hd) in KNOWN_SHAPES.items():
        if key.lower() == name.lower():
            return {"model_type": "llama", "hidden_size": h, "intermediate_size": i, "num_hidden_layers": n,
                    "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab,
                    "tie_word_embeddings": tied, "head_dim": hd}
    return None
