"""The evaluation sets of the k-shot baseline (`eval.baseline_shots`): each task's validation rows with k
of its training examples before them as earlier chat turns (`data/shots.py`), tokenised as training
tokenises (the chat template, `data.max_seq_len`, `data.truncation`), with the loss on the row's own
answer only. They are scored and generated on by the same `evaluate` as every other evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from multitune.config.schema import EvalConfig
from multitune.data.prepare import TaskSplit
from multitune.data.shots import draw_shots, with_shots
from multitune.eval.items import EvalSet, build_eval_set
from multitune.eval.runner import baseline_config, evaluate, spread

TRUNCATED = "truncated"  # the metric counting k-shot prompts cut to data.max_seq_len (one of kinds.COUNTS)


def build_shot_sets(
    tokenizer: Any, splits: Sequence[TaskSplit], k: int, seed: int, max_seq_len: int, truncation: str,
) -> list[EvalSet]:
    """Each task's validation rows as k-shot prompts (the same k training examples before every row)."""
    out = []
    for task_id, s in enumerate(splits):
        shots = draw_shots(s.train, k, seed, s.cfg.name)
        examples = [with_shots(ex, shots) for ex in s.val]
        out.append(build_eval_set(tokenizer, s.cfg.name, s.cfg.kind, examples, task_id, max_seq_len, truncation,
                                  s.labels, last_answer_only=True))
    return out


def count_truncated(results: Mapping[str, Any], shot_sets: Sequence[EvalSet], max_rows: int | None) -> None:
    """Add to each task's k-shot metrics how many of its evaluated prompts were cut to `data.max_seq_len`
    (the rows `evaluate` picked: `max_rows` spread evenly), so the tables can say so."""
    for es in shot_sets:
        if es.name in results:
            results[es.name].metrics[TRUNCATED] = float(sum(it.truncated for it in spread(es.items, max_rows)))


def evaluate_shots(
    model: Any, tokenizer: Any, shot_sets: Sequence[EvalSet], cfg: EvalConfig, pad_id: int, *, rank: int = 0,
    world_size: int = 1,
) -> dict[str, dict[str, float]]:
    """Task -> metrics of the untrained `model` on the baseline's rows as k-shot prompts, scored and
    generated on as the baseline is, with the count of prompts cut to `data.max_seq_len`."""
    used = baseline_config(cfg)
    results = evaluate(model, tokenizer, shot_sets, used, pad_id, generate=cfg.generate != "never", rank=rank,
                       world_size=world_size)
    count_truncated(results, shot_sets, used.max_rows)
    return {name: res.metrics for name, res in results.items()}
