"""Per-task evaluation: validation loss for every task, accuracy by scoring for closed-answer tasks.

Rows are sharded across processes (row i goes to process i % world_size) and the per-row records are
gathered, so no row is counted twice or lost whatever the number of processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from multitune.data.collate import pad_batch
from multitune.data.prepare import Prepared
from multitune.data.tokenize import Tokenized, answer_ids, prompt_ids
from multitune.eval.scoring import candidate_logprobs
from multitune.tasks.base import Example
from multitune.train.loss import per_example_loss


@dataclass
class TaskResult:
    metrics: dict[str, float]
    predictions: list[dict[str, Any]]


def evaluate(
    model: Any, tokenizer: Any, prepared: Prepared, micro_batch_size: int, max_rows: int | None,
    pad_id: int, rank: int = 0, world_size: int = 1,
) -> dict[str, TaskResult]:
    """Evaluate every task on its validation split. Returns task name -> metrics and per-row predictions."""
    was_training = model.training
    model.eval()
    results = {}
    for split in prepared.splits:
        name = split.cfg.name
        val_tok = prepared.val[name][:max_rows]
        val_ex = split.val[:max_rows]
        loss_sum, tokens = _gather_sums(_loss_sums(model, val_tok[rank::world_size], micro_batch_size, pad_id),
                                        world_size)
        metrics = {"loss": loss_sum / max(tokens, 1), "rows": float(len(val_ex))}
        predictions: list[dict[str, Any]] = []
        if val_ex and val_ex[0].candidates is not None:
            mine = score_examples(model, tokenizer, val_ex[rank::world_size])
            predictions = sorted(_gather_list(mine, world_size), key=lambda r: r["row"])
            metrics["accuracy"] = sum(r["correct"] for r in predictions) / len(predictions)
        results[name] = TaskResult(metrics, predictions)
    model.train(was_training)
    return results


@torch.no_grad()
def _loss_sums(model: Any, examples: Sequence[Tokenized], micro_batch_size: int, pad_id: int) -> tuple[float, int]:
    device = next(model.parameters()).device
    total, count = 0.0, 0
    ordered = sorted(examples, key=lambda ex: len(ex.input_ids))  # less padding; sums do not depend on order
    for i in range(0, len(ordered), micro_batch_size):
        batch = pad_batch(ordered[i : i + micro_batch_size], pad_id)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                       use_cache=False).logits
        sums, counts = per_example_loss(logits, batch["labels"].to(device))
        total += sums.sum().item()
        count += int(counts.sum().item())
    return total, count


def score_examples(model: Any, tokenizer: Any, examples: Sequence[Example]) -> list[dict[str, Any]]:
    """Pick each example's most likely candidate. One record per example: row, gold (None when
    unlabelled), prediction, correct, score (the prediction's log-likelihood)."""
    cache: dict[str, list[int]] = {}  # candidate -> token ids; the answer encoding does not depend on the prompt
    records = []
    for ex in examples:
        assert ex.candidates is not None
        cand_ids = [cache.setdefault(c, answer_ids(tokenizer, ex.prompt, c)) for c in ex.candidates]
        scores = candidate_logprobs(model, prompt_ids(tokenizer, ex.prompt), cand_ids)
        best = int(torch.argmax(scores))
        records.append({
            "row": ex.row, "gold": ex.label, "prediction": ex.candidates[best],
            "correct": ex.label is not None and ex.candidates[best] == ex.label, "score": float(scores[best]),
        })
    return records


def _gather_list(items: list[Any], world_size: int) -> list[Any]:
    if world_size == 1:
        return items
    from accelerate.utils import gather_object

    return list(gather_object(items))


def _gather_sums(sums: tuple[float, int], world_size: int) -> tuple[float, int]:
    parts = _gather_list([sums], world_size)
    return sum(p[0] for p in parts), sum(p[1] for p in parts)
