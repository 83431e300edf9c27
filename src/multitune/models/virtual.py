"""Prompt tuning and prefix tuning as leading keys and values that every sequence sees, in every batch layout.

peft's prompt-learning forward puts the virtual tokens in front of a plain padded batch. It cannot take what
the rest of multitune feeds a model: packed rows (position ids restart inside a row), shared-prefix rows and
scoring trees (4-D masks), a prompt's cache reused across batches, and answer-only logits (a boolean
`logits_to_keep` the width of the real tokens). Both methods come down to one thing, which can:

- per layer, P keys and values at positions 0 .. P-1 that every real token attends to, the real tokens at
  positions P + i (peft's numbering);
- prefix tuning: those keys and values are the trained parameters (peft's `get_prompt`);
- prompt tuning: they are what the model computes for the P trained embeddings, which come first and so
  attend only among themselves: the same for every sequence, computed once per forward.

`VirtualTokensModel.forward` builds those keys and values once, lends them to the batch as a cache (an
expanded view), shifts the position ids by P and gives every attention mask P visible leading columns
(a packed row with no mask gets `data/masks.packed_mask` first). Logits come out for the real tokens only,
so the loss, scoring and search code is the same for every method. A cache passed in (a generation step)
already holds the virtual tokens: it came from here; evaluation's packed passes put them in slots every
row sees (`eval/pool.py`).
tests/models/test_methods.py checks the logits against `PeftModel.from_pretrained`'s own on padded
batches, and scoring against a full forward per candidate.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftConfig, PeftModelForCausalLM

from multitune.data.masks import packed_mask, with_leading_keys
from multitune.data.prefix import BLOCKS_KWARG
from multitune.models.cache import cache_keyword, returned_cache


class VirtualTokensModel(PeftModelForCausalLM):
    """A peft prompt-learning model (prompt or prefix tuning) whose forward and generate take every layout
    (module docstring). Saved and loaded exactly as peft's: the adapter folder is peft's own."""

    @property
    def n_virtual(self) -> int:
        return int(self.active_peft_config.num_virtual_tokens)

    def virtual_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (keys, values) of the virtual tokens, each (1, kv_heads, P, head_dim)."""
        if self.active_peft_config.peft_type == "PREFIX_TUNING":
            cache = self.get_prompt(batch_size=1)
        else:  # the trained embeddings (1, P, D) through the decoder, at positions 0 .. P-1
            embeds = self.get_prompt(batch_size=1).to(self.get_input_embeddings().weight.dtype)
            decoder = self.get_base_model().get_decoder()
            out = decoder(inputs_embeds=embeds, use_cache=True,
                          position_ids=torch.arange(self.n_virtual, device=embeds.device)[None])
            cache = returned_cache(out)
        return [(k, v) for k, v, *_ in cache]

    def virtual_cache(self, batch: int) -> Any:
        """A fresh cache holding the virtual tokens for `batch` sequences (a view, not copies)."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                                            for k, v in self.virtual_kv()])

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        base = self.get_base_model()
        keyword = cache_keyword(type(base))
        cache = kwargs.pop("cache", None)
        cache = kwargs.pop("past_key_values", None) if cache is None else cache
        if BLOCKS_KWARG in kwargs:  # models/attention.select_for_shared_prefix gives this model dense masks
            raise ValueError("shared-prefix rows laid out for block attention cannot take virtual tokens: "
                             "lay them out with a dense mask")
        kwargs.pop("task_ids", None)
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        fresh = cache is None or cache.get_seq_length() == 0
        if fresh:
            cache = self.virtual_cache(batch)
        p = self.n_virtual
        if attention_mask is None and position_ids is not None and fresh:
            attention_mask = packed_mask(position_ids.expand(batch, -1))  # rows of several sequences
        if attention_mask is not None:
            attention_mask = with_leading_keys(attention_mask, p)
        if position_ids is not None:
            position_ids = position_ids + p
        return base(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                    position_ids=position_ids, **{keyword: cache}, **kwargs)

    def generate(self, *args: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        """transformers' generate on the base, continuing from the virtual tokens' cache: P filler ids stand
        for them in `input_ids` (generate skips what the cache holds) and P ones in the mask, so that the
        position ids it derives from the mask put the real tokens at P + i. The filler is cut off again."""
        base = self.get_base_model()
        batch, p = input_ids.shape[0], self.n_virtual
        filler = input_ids.new_zeros((batch, p))
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        out = base.generate(*args, input_ids=torch.cat([filler, input_ids], dim=1),
                            attention_mask=with_leading_keys(mask, p),
                            **{cache_keyword(type(base)): self.virtual_cache(batch)}, **kwargs)
        return out[:, p:]


@torch.no_grad()
def prefix_from_text(model: VirtualTokensModel, ids: list[int]) -> None:
    """Start prefix tuning's keys and values as those the base computes for the text `ids` (repeated or cut
    to the P virtual tokens) at positions 0 .. P-1: the model then starts as the base reading the text
    before every input. The inverse of the layout peft's `get_prompt` reads: row p of the embedding holds,
    for each layer in turn, its keys then its values at position p."""
    p = model.n_virtual
    ids = [ids[i % len(ids)] for i in range(p)]
    weight = model.prompt_encoder[model.active_adapter].embedding.weight
    out = model.get_base_model().get_decoder()(input_ids=torch.tensor([ids], device=weight.device), use_cache=True)
    rows = torch.stack([t[0] for k, v, *_ in returned_cache(out) for t in (k, v)])  # (layers x 2, heads, P, dim)
    weight.copy_(rows.permute(2, 0, 1, 3).reshape(p, -1))


def wrap(model: Any, peft_config: PeftConfig) -> VirtualTokensModel:
    """`model` with fresh virtual tokens (what `get_peft_model` does for a prompt-learning config)."""
    peft_config.base_model_name_or_path = model.__dict__.get("name_or_path", None) or None
    return VirtualTokensModel(model, peft_config)


def load(model: Any, adapter_dir: str) -> VirtualTokensModel:
    """A saved prompt- or prefix-tuning adapter on its base, for inference (`PeftModel.from_pretrained`'s
    steps, into this class)."""
    config = PeftConfig.from_pretrained(adapter_dir)
    config.inference_mode = True
    wrapped = VirtualTokensModel(model, config)
    wrapped.load_adapter(adapter_dir, "default", is_trainable=False)
    return wrapped
