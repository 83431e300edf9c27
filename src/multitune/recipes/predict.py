"""`multitune predict`: batch inference with a trained run on rows in a task's own format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from multitune import kinds, tasks
from multitune.config.schema import RunConfig
from multitune.data.sources import load_rows
from multitune.data.tokenize import prompt_ids
from multitune.errors import UserError
from multitune.eval.generate import greedy
from multitune.eval.runner import score_examples
from multitune.io import write_text_atomic
from multitune.models import load
from multitune.models.trained import load_run, read_run_config


def predict_file(run_dir: str | Path, input_path: str | Path, output_path: str | Path, task: str | None = None,
                 max_new_tokens: int = 128, batch_size: int = 8) -> int:
    """Predict every row of `input_path` with the run's model; write one JSON line per row (the row's own
    fields plus `prediction`, and `score`, the answer's log-likelihood, for closed-answer tasks).
    Returns the number of rows written."""
    task_cfg = _pick_task(read_run_config(run_dir), task)
    spec = kinds.kind(task_cfg.kind)
    labels = _trained_labels(Path(run_dir), task_cfg.name) if spec.labels else None
    rows = load_rows(task_cfg.model_copy(update={"source": str(input_path), "split": "train", "max_rows": None}))
    examples = tasks.examples(task_cfg, rows, labelled=False, labels=labels)
    model, tokenizer, _ = load_run(run_dir)
    if spec.closed:  # scored: the most likely candidate, with its log-likelihood
        records = score_examples(model, tokenizer, examples)
        extra = [{"prediction": r["prediction"], "score": r["score"]} for r in records]
    else:
        prompts = [prompt_ids(tokenizer, ex.prompt) for ex in examples]
        answers = greedy(model, tokenizer, prompts, max_new_tokens, batch_size, load.pad_id(tokenizer))
        extra = [{"prediction": a} for a in answers]
    lines = [json.dumps({**row, **e}, ensure_ascii=False, default=str) for row, e in zip(rows, extra, strict=True)]
    write_text_atomic(Path(output_path), "\n".join(lines) + "\n")
    return len(lines)


def _pick_task(cfg: RunConfig, name: str | None) -> Any:
    names = [t.name for t in cfg.tasks]
    if name is None:
        if len(names) == 1:
            return cfg.tasks[0]
        raise UserError(f"this run has {len(names)} tasks; say which one the rows belong to",
                        fix=f"add --task with one of: {', '.join(names)}")
    if name not in names:
        raise UserError(f"this run has no task {name!r}", fix=f"use one of: {', '.join(names)}")
    return cfg.task(name)


def _trained_labels(run_dir: Path, task: str) -> list[str]:
    """The label set the task was trained with, as recorded in the run's data_stats.json."""
    stats_path = run_dir / "data_stats.json"
    try:
        return list(json.loads(stats_path.read_text())[task]["labels"])
    except (OSError, KeyError, ValueError):
        raise UserError(f"cannot read the label set of task {task!r} from {stats_path}",
                        fix="predict with a run directory written by `multitune train`") from None
