"""Attention masks, one function per mask, for every layout that runs several sequences in one row or pass.

A boolean mask is True where a query attends to a key: query in dimension -2, key in dimension -1. The
shared-prefix rows of training (`data/prefix.py`), the virtual tokens' packed rows (`models/virtual.py`)
and the packed passes of evaluation (`eval/pool.py`, `eval/search.py`, `eval/generate.py`) build their
masks here and nowhere else; the candidate tree's own mask is `eval/scoring.CandidateTrie.ancestry`.

- `causal`: a run of new tokens after earlier keys it sees whole (a prompt; one decoding step after its
  prompt and earlier answer tokens; a suffix after its group's shared prefix);
- `segment_mask`: a dense (R, 1, T, T) mask of rows cut into segments, each seeing itself causally and
  optionally one other segment (its shared prefix); `packed_mask` is its case of sequences packed end to
  end, found from their position ids;
- `with_leading_keys`: any of these masks, or a padding mask, with keys in front that every query sees
  (the virtual tokens of prompt and prefix tuning, evaluation's shared slots);
- `padded_blocks`: small masks of unequal sizes stacked into one (N, 1, Q, K) for batched attention;
- `additive`: a boolean mask as eager attention adds it to the scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def causal(n: int, before: int = 0) -> torch.Tensor:
    """(n, before + n) bool: n new tokens that see `before` earlier keys and themselves causally.

    >>> causal(2, 1).int().tolist()
    [[1, 1, 0], [1, 1, 1]]
    """
    return torch.cat([torch.ones((n, before), dtype=torch.bool), torch.ones((n, n), dtype=torch.bool).tril()], dim=1)


def segment_mask(segments: torch.Tensor, prefix_of: torch.Tensor) -> torch.Tensor:
    """(R, 1, T, T) bool from per-token segment ids (R, T), negative on padding, and `prefix_of` (R, T), the
    segment each token also sees (its shared prefix's; -1 for none): a query sees the earlier keys of its own
    segment and of that one. A padding token sees only itself, so no softmax row is empty.

    >>> segment_mask(torch.tensor([[0, 0, 1, 2, -2]]), torch.tensor([[-1, -1, 0, 0, -1]]))[0, 0].int().tolist()
    [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [0, 0, 0, 0, 1]]
    """
    q_seg, k_seg = segments[:, :, None], segments[:, None, :]
    same = (q_seg == k_seg) & (q_seg >= 0)
    own_prefix = (prefix_of[:, :, None] == k_seg) & (prefix_of[:, :, None] >= 0)
    width = segments.shape[1]
    mask = (same | own_prefix) & torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    mask |= torch.eye(width, dtype=torch.bool, device=segments.device)
    return mask[:, None]


def packed_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool causal mask of rows that hold several sequences, each starting where its position
    ids restart (what transformers detects by itself, but only without a cache): `segment_mask` with one
    segment per sequence.

    >>> packed_mask(torch.tensor([[0, 1, 0, 1]]))[0, 0].int().tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    """
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    sequence = starts.cumsum(dim=1)  # (B, T), from 1: no token is padding
    return segment_mask(sequence, torch.full_like(sequence, -1))


def with_leading_keys(mask: torch.Tensor, n: int) -> torch.Tensor:
    """`mask` with `n` leading key columns every query attends: a 2-D padding mask gets ones; a boolean mask
    (True: attend) True; an additive one (0: attend) 0.

    >>> with_leading_keys(torch.tensor([[0, 1]]), 2).tolist()
    [[1, 1, 0, 1]]
    >>> with_leading_keys(torch.tensor([[[[True, False]]]]), 1).tolist()
    [[[[True, True, False]]]]
    """
    fill = True if mask.dtype == torch.bool else (1 if mask.dim() == 2 else 0)
    return torch.cat([mask.new_full((*mask.shape[:-1], n), fill), mask], dim=-1)


def padded_blocks(masks: Sequence[torch.Tensor], q_len: int, k_len: int) -> torch.Tensor:
    """(N, 1, q_len, k_len) bool: each (q, k) mask of `masks` in the top left corner of its block. A padded
    query slot sees the first key only (no softmax row is empty; its output is dropped), and a padded key
    column is seen by no real query.

    >>> padded_blocks([torch.ones((1, 1), dtype=torch.bool)], 2, 2)[0, 0].int().tolist()
    [[1, 0], [1, 0]]
    """
    out = torch.zeros((len(masks), 1, q_len, k_len), dtype=torch.bool)
    for b, mask in enumerate(masks):
        q, k = mask.shape
        out[b, 0, :q, :k] = mask
        out[b, 0, q:, 0] = True
    return out


def additive(mask: torch.Tensor) -> torch.Tensor:
    """A boolean mask as eager attention takes it: added to the scores, 0 where a key is seen and float32's
    lowest value where it is not (eager attention takes the softmax in float32 whatever the weights' dtype).

    >>> additive(torch.tensor([True, False])).tolist() == [0.0, torch.finfo(torch.float32).min]
    True
    """
    return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
