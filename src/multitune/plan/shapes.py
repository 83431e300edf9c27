"""A model's shape as the estimator needs it: its linear layers, embeddings and attention geometry.

`from_hf_config` builds the model on PyTorch's meta device (no memory, no weights) and reads every
linear layer off it, so parameter counts are exact for any architecture transformers knows;
`llama_shape` is the same for a Llama written out by hand (the unit tests pin one against the other).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Linear:
    """One kind of linear layer inside the decoder blocks (`q_proj`...), and how many there are."""

    name: str
    in_features: int
    out_features: int
    count: int

    @property
    def params(self) -> int:
        return self.in_features * self.out_features * self.count


@dataclass(frozen=True)
class ModelShape:
    """What the estimator knows of a model. `linears` are the decoder blocks' linear layers (the output
    head is `lm_head_params`, 0 when tied to the input embedding); `other_params` are norms and biases."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    linears: tuple[Linear, ...]
    embedding_params: int
    lm_head_params: int
    other_params: int
    source: str = ""
    """Where the shape was read: a config.json, a GGUF header, the tiny config, the known-shapes table."""
    notes: tuple[str, ...] = field(default=())

    @property
    def linear_params(self) -> int:
        return sum(lin.params for lin in self.linears)

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embedding_params + self.lm_head_params + self.other_params

    @property
    def tied_embeddings(self) -> bool:
        return self.lm_head_params == 0

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def attn_dim(self) -> int:
        return self.num_heads * self.head_dim

    def linear(self, name: str) -> Linear | None:
        return next((lin for lin in self.linears if lin.name == name), None)


def llama_shape(hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int, num_kv_heads: int,
                vocab_size: int, tied: bool = False, head_dim: int | None = None, source: str = "") -> ModelShape:
    """A Llama decoder (no biases, RMSNorm, SwiGLU, grouped-query attention) written out by hand.

    >>> s = llama_shape(4096, 14336, 32, 32, 8, 128256)  # Llama 3.1 8B
    >>> s.total_params
    8030261248
    """
    hd = head_dim or hidden_size // num_heads
    h, kv, q = hidden_size, num_kv_heads * hd, num_heads * hd
    n = num_layers
    linears = (Linear("q_proj", h, q, n), Linear("k_proj", h, kv, n), Linear("v_proj", h, kv, n),
               Linear("o_proj", q, h, n), Linear("gate_proj", h, intermediate_size, n),
               Linear("up_proj", h, intermediate_size, n), Linear("down_proj", intermediate_size, h, n))
    return ModelShape(h, intermediate_size, n, num_heads, num_kv_heads, hd, vocab_size, linears,
                      embedding_params=vocab_size * h, lm_head_params=0 if tied else vocab_size * h,
                      other_params=(2 * n + 1) * h, source=source)


def from_hf_config(config: Any, source: str = "") -> ModelShape:
    """Read the shape of a transformers config by building its causal LM on the meta device (no memory
    is allocated, no weight is read). Every `nn.Linear` inside the decoder blocks becomes a `Linear`."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    kinds: Counter[tuple[str, int, int]] = Counter()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not model.get_output_embeddings():
            kinds[(name.rsplit(".", 1)[-1], module.in_features, module.out_features)] += 1
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is None or head.weight is embed
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    linear_weights = sum(i * o * c for (_, i, o), c in kinds.items())
    lm_head = 0 if tied else head.weight.numel()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    hd = getattr(text, "head_dim", None) or text.hidden_size // heads
    return ModelShape(
        text.hidden_size, text.intermediate_size, text.num_hidden_layers, heads,
        getattr(text, "num_key_value_heads", None) or heads, hd, text.vocab_size,
        tuple(Linear(n, i, o, c) for (n, i, o), c in kinds.items()),
        embedding_params=embed.numel(), lm_head_params=lm_head,
        other_params=total - linear_weights - embed.numel() - lm_head, source=source,  # norms, biases
    )
