"""`multitune data preview`: what the model will learn, before paying for a GPU.

Renders the first training examples of each task exactly as training tokenises them (the model's chat
template, truncation included) with the trained tokens marked, then (with `eval.baseline_shots`) the
k-shot prompt the in-context baseline scores the first validation row with, its scored answer marked,
then the per-task statistics of the run. It fills the tokenised cache, so the `multitune train` that follows does not tokenise again.
A recipe: it loads the tokenizer (`models`), so it sits above `data`, on the recipes' floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from multitune.config.schema import RunConfig
from multitune.data.tokenize import IGNORE, Tokenized, tokenize_one
from multitune.errors import UserError
from multitune.tasks.base import Example

# Trained tokens are wrapped in these: green on a terminal, brackets elsewhere (files, pipes, CI logs).
COLOR = ("\x1b[1;32m", "\x1b[0m")
PLAIN = ("[[", "]]")


def preview(cfg: RunConfig, task: str | None = None, n: int = 3, color: bool = False) -> str:
    """The preview text for the tasks of `cfg` (or the one named `task`): `n` training examples each,
    then the data summary."""
    from multitune.data.prepare import load_splits, tokenize_splits, training_conversations
    from multitune.data.stats import data_summary
    from multitune.models import load

    names = [t.name for t in cfg.tasks]
    if task is not None and task not in names:
        raise UserError(f"this config has no task {task!r}", fix=f"use one of: {', '.join(names)}")
    splits = load_splits(cfg)
    tokenizer = load.load_tokenizer(load.resolve(cfg.model, training_conversations(splits), cfg.seed), cfg.model)
    prepared = tokenize_splits(tokenizer, splits, cfg)
    marks = COLOR if color else PLAIN
    out = [f"Trained tokens are marked {marks[0]}like this{marks[1]}; everything else is context.\n"]
    for task_id, split in enumerate(splits):
        if task is None or split.cfg.name == task:
            # A task that is evaluated only (train: false) shows the validation rows it is scored on.
            shown, what = (split.train, "training") if split.cfg.train else (split.val, "validation (train: false)")
            out.append(f"=== {split.cfg.name} ({split.cfg.kind}): {min(n, len(shown))} of "
                       f"{len(shown)} {what} examples ===")
            out += [_example(tokenizer, ex, task_id, cfg, marks) for ex in shown[:n]]
            if cfg.eval.baseline_shots:
                out.append(shot_prompt(tokenizer, splits, task_id, cfg, marks))
    out.append(data_summary(prepared, cfg.seed))
    return "\n".join(out)


def _example(tokenizer: Any, ex: Example, task_id: int, cfg: RunConfig, marks: tuple[str, str]) -> str:
    status, tok = tokenize_one(tokenizer, ex, task_id, cfg.data.max_seq_len, cfg.data.truncation)
    head = f"--- row {ex.row}"
    if tok is None:
        return f"{head}: dropped ({status.replace('_', ' ')})\n"
    note = ", prompt truncated from the left" if status == "truncated" else ""
    return (f"{head}: {len(tok.input_ids)} tokens, {tok.n_answer_tokens} trained{note}\n"
            f"{marked_text(tokenizer, tok, marks)}\n")


def shot_prompt(tokenizer: Any, splits: Sequence[Any], task_id: int, cfg: RunConfig,
                marks: tuple[str, str] = PLAIN) -> str:
    """The k-shot baseline's prompt for the task's first validation row, as the evaluation tokenises it
    (`eval/shots.py`), with the answer it scores marked (the examples' answers are context)."""
    from dataclasses import replace

    from multitune.eval.shots import build_shot_sets

    k, split = cfg.eval.baseline_shots, splits[task_id]
    es = build_shot_sets(tokenizer, [replace(split, val=split.val[:1])], k, cfg.seed, cfg.data.max_seq_len,
                         cfg.data.truncation)[0]
    head = f"--- {k}-shot baseline prompt (eval.baseline_shots), {es.name}"
    if not es.items:
        return f"{head}: its first validation row does not fit data.max_seq_len\n"
    item = es.items[0]
    shots = [m for m in item.example.prompt if m["role"] == "assistant"]
    note = ", prompt truncated from the left to data.max_seq_len" if item.truncated else ""
    return (f"{head}, validation row {item.example.row} after {len(shots)} training examples: "
            f"{len(item.tokenized.input_ids)} tokens{note}\n{marked_text(tokenizer, item.tokenized, marks)}\n")


def marked_text(tokenizer: Any, tok: Tokenized, marks: Sequence[str] = PLAIN) -> str:
    """The example's text with each run of trained tokens wrapped in `marks`.

    Each run is decoded on its own, so what is inside the marks is exactly the trained tokens.
    """
    pieces: list[str] = []
    start = 0
    trained = [label != IGNORE for label in tok.labels]
    for i in range(1, len(trained) + 1):
        if i == len(trained) or trained[i] != trained[start]:
            text = tokenizer.decode(tok.input_ids[start:i], skip_special_tokens=False)
            pieces.append(f"{marks[0]}{text}{marks[1]}" if trained[start] else text)
            start = i
    return "".join(pieces)
