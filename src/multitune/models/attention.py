"""Attention by blocks for shared-prefix rows (data/prefix.py).

A shared-prefix row holds a prefix and the suffixes of several examples; its dense mask makes sdpa pay for
every pair of tokens in the row, though a suffix token sees only its prefix and its own suffix. Here each
segment of the row is a block: its queries, and as keys its prefix (for a suffix) and its own tokens. The
blocks are gathered out of the row, attended with a small mask each, and scattered back; the result is
the dense mask's, computed on a fraction of the pairs (banking77 rows of 8 examples: about a fifth).

It is a transformers attention function (`AttentionInterface`), used only while `blocks` is on: a batch
without block indices (evaluation, generation, padded training) goes to transformers' sdpa unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

NAME = "multitune_blocks"
KWARG = "multitune_blocks"  # the model keyword that carries the block indices down to attention


def block_attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
    scaling: float | None = None, dropout: float = 0.0, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query (R, H, T, D), key and value (R, Hkv, T, D) -> (R, T, H, D), as transformers' sdpa returns it.

    `kwargs[KWARG]` = (q_index (N, Q), q_take (M,), k_index (N, K), mask (N, 1, Q, K)): flat token
    indices (row x T + position) of each block's queries and keys, padded, and which of the N x Q query
    slots are real (a padded slot sees one key, so no softmax row is empty, and is dropped on the way
    back). Gathers are `index_select`: their backward is an `index_add`, several times faster on a CPU
    than advanced indexing's accumulating `index_put`.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    blocks = kwargs.pop(KWARG, None)
    if blocks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    q_index, q_take, k_index, mask = blocks
    rows, heads, width, dim = query.shape
    n, q_len = q_index.shape

    def gather(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # (R, h, T, D) -> (N, h, len, D)
        flat = states.transpose(1, 2).reshape(rows * width, states.shape[1], dim)
        return flat.index_select(0, index.reshape(-1)).view(n, index.shape[1], states.shape[1], dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(
        gather(query, q_index), gather(key, k_index), gather(value, k_index), attn_mask=mask,
        dropout_p=dropout if module.training else 0.0, scale=scaling, enable_gqa=heads != key.shape[1],
    )  # (N, H, Q, D)
    out = out.transpose(1, 2).reshape(n * q_len, heads, dim).index_select(0, q_take)
    result = out.new_zeros(rows * width, heads, dim).index_copy(0, q_index.reshape(-1).index_select(0, q_take), out)
    return result.view(rows, width, heads, dim), None


_registered = False


def register() -> None:
    """Make `NAME` an attention implementation transformers knows (once per process), masks as sdpa's."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(NAME, block_attention)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    _registered = True


def hf_config(model: Any) -> Any:
    """The transformers config under PEFT, DDP, FSDP or compile wrappers (None when there is none)."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return getattr(model, "config", None)


@contextlib.contextmanager
def blocks(model: Any, active: bool) -> Iterator[None]:
    """While inside (a step's forward and backward, so that a checkpointed layer recomputes the same way),
    a sdpa model's attention takes the block path for batches that carry block indices."""
    config = hf_config(model)
    if not active or config is None or config._attn_implementation != "sdpa":
        yield
        return
    register()
    config._attn_implementation_internal = NAME
    try:
        yield
    finally:
        config._attn_implementation_internal = "sdpa"
