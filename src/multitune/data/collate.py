"""Batches of tokenised examples -> padded tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from multitune.data.prefix import BLOCK_KEYS, BLOCKS_KWARG
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


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The tensors of a batch that go into the model's forward (labels and task ids stay out). A
    shared-prefix batch laid out for block attention (data/prefix.py) adds its block indices under one
    keyword, which transformers hands down to the attention function (models/attention.py)."""
    inputs: dict[str, Any] = {k: batch[k] for k in MODEL_KEYS if k in batch}
    if BLOCK_KEYS[0] in batch:
        inputs[BLOCKS_KWARG] = tuple(batch[k] for k in BLOCK_KEYS)
    return inputs


def real_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Number of non-padding tokens in a batch (a 0-dim tensor): from the attention mask of a padded
    batch, from the per-token task ids (-1 on padding) of a packed one, which has no attention mask; a
    shared-prefix batch (data/prefix.py) says how many its rows hold, each counting the prefix."""
    if "row_tokens" in batch:
        return batch["row_tokens"]
    if "attention_mask" in batch:
        return batch["attention_mask"].sum()
    return (batch["task_ids"] >= 0).sum()
