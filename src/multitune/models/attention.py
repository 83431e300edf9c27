"""Attention by blocks for shared-prefix rows (data/prefix.py).

A shared-prefix row holds a shared prefix and the suffixes of several examples; its dense mask makes sdpa
pay for every pair of tokens in the row, though a suffix token sees only its shared prefix and its own
suffix. Here each segment of the row is a block: its queries, and as keys its shared prefix (for a suffix)
and its own tokens (the blocks and their masks: `data/prefix.blocks`). The blocks are gathered out of the
row, attended with a small mask each, and scattered back; the result is the dense mask's, computed on a
fraction of the pairs (banking77 rows of 8 examples: about a fifth).

How it is chosen, once per run and through transformers' public interface only:

- `block_attention` is registered as an attention implementation, `NAME` (`AttentionInterface.register`),
  whose masks transformers makes as sdpa's (`AttentionMaskInterface.register`);
- a run whose micro-batches are shared-prefix rows selects it on its sdpa model before training, with
  `PreTrainedModel.set_attn_implementation` (`select_for_shared_prefix`), and from then on every forward
  goes through it. A batch that carries block indices (the keyword `BLOCKS_KWARG`, which transformers hands
  down to the attention function; `data/collate.model_inputs` puts them there) is attended by blocks; any
  other batch (evaluation, scoring, generation, padded rows) goes to transformers' own sdpa function, with
  the mask transformers made for sdpa: exactly as under sdpa;
- the same call says which mask the run's shared-prefix batches carry (`prefix_mask`): the blocks' under
  block attention, a dense one under eager attention or with virtual tokens (models/virtual.py: block
  attention has no place for them). A batch carries that one mask and the loop runs it whatever the
  attention.

Selected once rather than switched around each step: nothing changes the model's attention behind the
loop's back, a checkpointed layer recomputes the way it ran, and evaluation in the middle of a run needs
no switching back. A keyword alone could not do it: transformers picks the attention function from the
model's config, so only a selected function ever sees the keyword.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from multitune.data.prefix import BLOCKS_KWARG, PrefixMask

NAME = "multitune_blocks"
"""The attention implementation's name in transformers' `AttentionInterface`."""

MASKS: dict[str, PrefixMask] = {NAME: "blocks", "sdpa": "dense", "eager": "additive"}
"""The mask a shared-prefix batch carries for each attention implementation that takes one."""


def block_attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
    scaling: float | None = None, dropout: float = 0.0, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query (R, H, T, D), key and value (R, Hkv, T, D) -> (R, T, H, D), as transformers' sdpa returns it.

    With `kwargs[BLOCKS_KWARG]` = (q_index (N, Q), q_take (M,), k_index (N, K)), `attention_mask` is the
    blocks' (N, 1, Q, K): flat token indices (row x T + position) of each block's queries and keys, padded,
    and which of the N x Q query slots are real (a padded slot sees one key, so no softmax row is empty, and
    is dropped on the way back). Gathers are `index_select`: their backward is an `index_add`, several times
    faster on a CPU than advanced indexing's accumulating `index_put`. Without it: transformers' sdpa.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    blocks = kwargs.pop(BLOCKS_KWARG, None)
    if blocks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    q_index, q_take, k_index = blocks
    rows, heads, width, dim = query.shape
    n, q_len = q_index.shape

    def gather(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # (R, h, T, D) -> (N, h, len, D)
        flat = states.transpose(1, 2).reshape(rows * width, states.shape[1], dim)
        return flat.index_select(0, index.reshape(-1)).view(n, index.shape[1], states.shape[1], dim).transpose(1, 2)

    q, k, v = gather(query, q_index), gather(key, k_index), gather(value, k_index)
    with upcast_on_cpu(q) as dtype:
        out = F.scaled_dot_product_attention(
            q.to(dtype), k.to(dtype), v.to(dtype), attn_mask=attention_mask,
            dropout_p=dropout if module.training else 0.0, scale=scaling, enable_gqa=heads != key.shape[1],
        ).to(query.dtype)  # (N, H, Q, D)
    out = out.transpose(1, 2).reshape(n * q_len, heads, dim).index_select(0, q_take)
    result = out.new_zeros(rows * width, heads, dim).index_copy(0, q_index.reshape(-1).index_select(0, q_take), out)
    return result.view(rows, width, heads, dim), None


@contextmanager
def upcast_on_cpu(states: torch.Tensor) -> Iterator[torch.dtype]:
    """The dtype to attend in: float32 on a CPU where the states are bfloat16 or bf16 autocast would make them
    so (autocast off meanwhile, or it would cast them back), else the states' own. PyTorch's CPU flash
    attention runs its backward 3.5-4x slower in bfloat16 than in float32 (docs/benchmarks.md, "The bf16
    training step"); the casts cost less than that, and the softmax is more exact."""
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    if states.device.type == "cpu" and (states.dtype == torch.bfloat16 or autocast_bf16):
        with torch.autocast("cpu", enabled=False):
            yield torch.float32
    else:
        yield states.dtype


def register() -> None:
    """Make `NAME` an attention implementation transformers knows, its masks made as sdpa's (a process-wide
    table; registering again changes nothing)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, block_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def transformers_model(model: Any) -> Any:
    """The transformers model inside PEFT, DDP, FSDP or compile wrappers (the outermost `PreTrainedModel`)."""
    from transformers import PreTrainedModel

    found = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if found is None:
        raise TypeError(f"{type(model).__name__} holds no transformers model")
    return found


def implementation(model: Any) -> str:
    """The attention implementation the model runs (transformers keeps it in the config, read-only here)."""
    return transformers_model(model).config._attn_implementation


def use_blocks(model: Any) -> None:
    """Select block attention on a sdpa model (for every forward from now on: module docstring). A model
    under another attention keeps it; so does one whose class cannot switch (transformers warns)."""
    if implementation(model) == "sdpa":
        register()
        transformers_model(model).set_attn_implementation(NAME)


def prefix_mask(model: Any) -> PrefixMask:
    """The mask shared-prefix batches carry for the model's attention as it is (`MASKS`)."""
    current = implementation(model)
    if current not in MASKS:
        raise ValueError(f"shared-prefix rows need an attention that takes a mask ({', '.join(MASKS)}), "
                         f"not {current}")
    return MASKS[current]


def select_for_shared_prefix(model: Any, virtual_tokens: int) -> PrefixMask:
    """Choose, once per run, the attention the model runs shared-prefix rows under, and return the mask
    their batches carry for it: block attention on a sdpa model without virtual tokens (`use_blocks`);
    otherwise the attention it has, with a dense mask."""
    if not virtual_tokens:  # virtual tokens are keys outside the row: a block has no place for them
        use_blocks(model)
    return prefix_mask(model)
