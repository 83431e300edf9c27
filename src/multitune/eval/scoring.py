"""Scoring closed-answer tasks by likelihood: which candidate answer does the model find most probable?

The prompt is run once; its key/value cache is then repeated for the K candidates, which run together
as one (K, L) batch behind it. That is exact (the same numbers as K full forward passes) and costs one
prompt prefill instead of K.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


@torch.no_grad()
def candidate_logprobs(model: Any, prompt: Sequence[int], candidates: Sequence[Sequence[int]]) -> torch.Tensor:
    """log P(candidate | prompt) for each candidate token sequence -> (K,) float32 on the CPU.

    Each candidate is the whole answer as trained (label tokens and the end-of-turn token), so a label
    that is a prefix of another ("Claim", "Claim denied") is not favoured.
    """
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([list(prompt)], device=device), use_cache=True)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # (V,): distribution of the answer's 1st token
    scores = torch.stack([first[c[0]] for c in candidates])  # (K,)
    width = max(len(c) for c in candidates)
    if width == 1:
        return scores.cpu()
    cache = out.past_key_values
    cache.batch_repeat_interleave(len(candidates))
    # Feed each candidate but its last token; right padding is harmless because a padded position only
    # comes after the real tokens of its row, which causal attention never lets them see.
    inputs = torch.zeros((len(candidates), width - 1), dtype=torch.long, device=device)
    for k, c in enumerate(candidates):
        inputs[k, : len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long, device=device)
    logp = torch.log_softmax(model(input_ids=inputs, past_key_values=cache, use_cache=True).logits.float(), -1)
    for k, c in enumerate(candidates):  # logp[k, j] is the distribution of candidate token j + 1
        rest = torch.tensor(c[1:], dtype=torch.long, device=device)
        scores[k] += logp[k, torch.arange(len(c) - 1, device=device), rest].sum()
    return scores.cpu()
