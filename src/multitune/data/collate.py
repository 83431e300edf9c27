"""Batches of tokenised examples -> padded tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from multitune.data.tokenize import IGNORE, Tokenized


def pad_batch(examples: Sequence[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example. Padding has attention 0 and label IGNORE, so it carries no loss.

    Returns input_ids, attention_mask, labels: (B, T) and task_ids: (B,).
    """
    width = max(len(ex.input_ids) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, ex in enumerate(examples):
        n = len(ex.input_ids)
        ids[i, :n] = torch.tensor(ex.input_ids)
        labels[i, :n] = torch.tensor(ex.labels)
        mask[i, :n] = 1
    task_ids = torch.tensor([ex.task_id for ex in examples], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "task_ids": task_ids}


MODEL_KEYS = ("input_ids", "attention_mask", "position_ids")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a batch that go into the model's forward (labels and task ids stay out)."""
    return {k: batch[k] for k in MODEL_KEYS if k in batch}


def real_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Number of non-padding tokens in a batch (a 0-dim tensor): from the attention mask of a padded
    batch, from the per-token task ids (-1 on padding) of a packed one, which has no attention mask; a
    shared-prefix batch (data/prefix.py) says how many its rows hold, each counting the prefix."""
    if "row_tokens" in batch:
        return batch["row_tokens"]
    if "attention_mask" in batch:
        return batch["attention_mask"].sum()
    return (batch["task_ids"] >= 0).sum()
