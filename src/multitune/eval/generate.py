"""Batched greedy generation from prompt token ids (what a chat user of the model would see)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from multitune.eval.lockstep import SOLO, Lockstep


@torch.no_grad()
def greedy(
    model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int, pad_id: int,
    step: Lockstep = SOLO,
) -> list[str]:
    """Decode greedily after each prompt until an end-of-turn/sequence token or `max_new_tokens`.

    Prompts are left-padded into batches (so every row's next token sits at the same position), sorted
    by length to waste little padding; the answers come back in the prompts' order. With other processes
    (`step`), every process runs as many batches (padded with one-token prompts whose answers are
    dropped), each with `synced_gpus`: a process whose rows are done keeps stepping until all are.
    """
    device = next(model.parameters()).device
    padded = list(prompts) + [[pad_id]] * (step.most(len(prompts)) - len(prompts))
    order = sorted(range(len(padded)), key=lambda i: (i >= len(prompts), len(padded[i])))  # fillers last
    out: list[str] = [""] * len(padded)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = left_pad([padded[i] for i in chunk], pad_id)
        width = ids.shape[1]
        generated = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=pad_id, synced_gpus=step.synced,
        )
        for row, i in enumerate(chunk):
            out[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True).strip()
    return out[: len(prompts)]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask (B, longest) with each prompt at the right end, so every row's next
    token sits at the same position.

    >>> left_pad([[7, 8], [9]], 0)
    (tensor([[7, 8],
            [0, 9]]), tensor([[1, 1],
            [0, 1]]))
    """
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(list(p))
        mask[row, width - len(p):] = 1
    return ids, mask
