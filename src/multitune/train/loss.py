"""Token-level losses. The step loss is a sum over answer tokens divided by the step's answer-token
count (DESIGN.md #3): every answer token weighs the same whatever micro-batch or process it lands in."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multitune.data.tokenize import IGNORE


def answer_token_count(labels: torch.Tensor) -> torch.Tensor:
    """Number of tokens that carry loss: labels are shifted by one, so the first position never does."""
    return (labels[:, 1:] != IGNORE).sum()


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy and answer-token count per example.

    logits: (B, T, V), labels: (B, T) with IGNORE where no loss -> (B,) float32 sums, (B,) int counts.
    Computed in float32 whatever the logits' dtype, so bf16 runs sum losses without rounding drift.
    """
    shift_logits = logits[:, :-1, :].float()  # (B, T-1, V): position t predicts token t+1
    shift_labels = labels[:, 1:]  # (B, T-1)
    token_loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=IGNORE, reduction="none",
    ).view(shift_labels.shape)  # (B, T-1), 0 where ignored
    return token_loss.sum(dim=1), (shift_labels != IGNORE).sum(dim=1)


def per_task_sums(
    loss_sums: torch.Tensor, counts: torch.Tensor, task_ids: torch.Tensor, n_tasks: int
) -> torch.Tensor:
    """(n_tasks, 2) tensor of [summed loss, answer tokens] per task, for per-task loss curves."""
    out = torch.zeros((n_tasks, 2), dtype=torch.float64, device=loss_sums.device)
    out[:, 0].index_add_(0, task_ids, loss_sums.detach().double())
    out[:, 1].index_add_(0, task_ids, counts.double())
    return out


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the positions whose next token is an answer token, i.e. where logits are needed."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep


def per_example_loss_at(
    logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `per_example_loss`, from logits computed only at the `keep` positions.

    logits: (N, V) for the N True positions of keep (B, T), in row-major order, as a model returns them
    for `logits_to_keep=keep` -> (B,) float32 loss sums, (B,) answer-token counts.
    """
    targets = labels[:, 1:][keep[:, :-1]]  # (N,): the token each kept position predicts
    rows = keep.nonzero(as_tuple=True)[0]  # (N,): the example each kept position belongs to
    token_loss = F.cross_entropy(logits.float(), targets, reduction="none")  # (N,)
    sums = torch.zeros(labels.size(0), dtype=torch.float32, device=logits.device).index_add_(0, rows, token_loss)
    counts = torch.zeros(labels.size(0), dtype=torch.long, device=logits.device).index_add_(
        0, rows, torch.ones_like(rows))
    return sums, counts
