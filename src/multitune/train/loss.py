"""Token-level losses. The step loss is a sum over answer tokens divided by the step's answer-token
count (DESIGN.md #3): every answer token weighs the same whatever micro-batch or process it lands in."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multitune.data.tokenize import IGNORE


def answer_token_count(labels: torch.Tensor) -> torch.Tensor:
    """Number of tokens that carry loss: labels are shifted by one, so the first position never does."""
    return (labels[:, 1:] != IGNORE).sum()


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy per position: logits (B, T, V), labels (B, T) -> (B, T-1) float32, 0 where
    the target is IGNORE. Position t scores token t+1. Computed in float32 whatever the logits' dtype, so
    bf16 runs sum losses without rounding drift."""
    shift_logits = logits[:, :-1, :].float()  # (B, T-1, V): position t predicts token t+1
    shift_labels = labels[:, 1:]  # (B, T-1)
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=IGNORE, reduction="none",
    ).view(shift_labels.shape)


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy and answer-token count per row.

    logits: (B, T, V), labels: (B, T) with IGNORE where no loss -> (B,) float32 sums, (B,) int counts.
    """
    return token_losses(logits, labels).sum(dim=1), (labels[:, 1:] != IGNORE).sum(dim=1)


def per_task_sums(
    token_loss: torch.Tensor, labels: torch.Tensor, task_ids: torch.Tensor, n_tasks: int
) -> torch.Tensor:
    """(n_tasks, 2) tensor of [summed loss, answer tokens] per task, for per-task loss curves.

    token_loss: (B, T-1) from `token_losses`; labels: (B, T); task_ids: (B,) one task per row (padded
    batches) or (B, T) one per token (packed rows, which hold several tasks). A loss at position t is
    the loss of token t+1, so it counts for token t+1's task.
    """
    if task_ids.dim() == 1:
        task_ids = task_ids[:, None].expand_as(labels)
    trained = labels[:, 1:] != IGNORE  # (B, T-1)
    tasks = task_ids[:, 1:][trained]
    out = torch.zeros((n_tasks, 2), dtype=torch.float64, device=token_loss.device)
    out[:, 0].index_add_(0, tasks, token_loss.detach()[trained].double())
    out[:, 1].index_add_(0, tasks, torch.ones_like(tasks, dtype=torch.float64))
    return out


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the positions whose next token is an answer token, i.e. where logits are needed."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep


def logits_to_keep_argument(keep: torch.Tensor, mask_supported: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What to pass a model as `logits_to_keep` for the positions `keep` (B, T), and the (B, K) mask that
    picks them out of the logits it returns (None when it returns them already picked, as (N, V)).

    transformers from 5.2x takes the boolean mask itself; 5.17 (the GPU images' version) takes only
    positions shared by every row, so there the columns any row keeps are asked for, (B, K, V), and the
    mask picks the kept ones in the same row-major order. `mask_supported` None asks transformers.

    >>> keep = torch.tensor([[False, True, False], [True, False, False]])
    >>> arg, pick = logits_to_keep_argument(keep, mask_supported=False)
    >>> arg.tolist(), pick.tolist()
    ([0, 1], [[False, True], [True, False]])
    """
    if mask_supported is None:
        from transformers import modeling_utils

        mask_supported = hasattr(modeling_utils, "slice_logits_to_keep")
    if mask_supported:
        return keep, None
    columns = keep.any(dim=0).nonzero().squeeze(1)  # (K,)
    return columns, keep[:, columns]


def token_losses_at(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`token_losses` from logits computed only at the `keep` positions.

    logits: (N, V) for the N True positions of keep (B, T), in row-major order, as a model returns them
    for `logits_to_keep=keep` -> (B, T-1) float32, 0 at every other position.
    """
    kept = keep[:, :-1]  # (B, T-1): a kept position t predicts token t+1
    token_loss = F.cross_entropy(logits.float(), labels[:, 1:][kept], reduction="none")  # (N,)
    return torch.zeros(kept.shape, dtype=torch.float32, device=logits.device).masked_scatter(kept, token_loss)
