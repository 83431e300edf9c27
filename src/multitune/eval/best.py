"""Metric names per task kind, each task's primary metric, and the best-metric rule that picks the best
checkpoint. Pure and torch-free: the config imports it to validate `eval.best_metric`.

Closed-answer kinds (`classification`, `multiple_choice`) are scored; every other kind (`instruction`,
and `chat`, `summarization` or any kind added later) is a generation task, judged by ROUGE/BLEU/chrF on
greedy answers and by perplexity on the references.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence

CLOSED_KINDS = ("classification", "multiple_choice")
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "gen_invalid_rate"})
COUNTS = frozenset({"rows", "gen_rows"})  # bookkeeping, not quality: left out of tables and curves
GENERATED_CLOSED = ("gen_accuracy", "gen_macro_f1", "gen_exact_match", "gen_invalid_rate")
GENERATED_OPEN = ("rouge1", "rouge2", "rougeL", "bleu", "chrf")


def is_closed(kind: str) -> bool:
    return kind in CLOSED_KINDS


def primary_metric(kind: str) -> str:
    """The one number that says how good a task is: accuracy for closed kinds, ROUGE-L for the rest."""
    return "accuracy" if is_closed(kind) else "rougeL"


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def metric_names(kind: str, *, generated: bool, choice_texts: bool = False) -> list[str]:
    """The metrics an evaluation of a task of this kind reports (`generated`: with generation on)."""
    if kind == "classification":
        names = ["loss", "accuracy", "macro_f1", "weighted_f1"]
    elif kind == "multiple_choice":
        names = ["loss", "accuracy"] + (["choice_acc", "choice_acc_norm"] if choice_texts else [])
    else:
        names = ["loss", "perplexity"]
    if generated:
        names += list(GENERATED_CLOSED if is_closed(kind) else GENERATED_OPEN)
    return names


def best_metric_problems(
    name: str, tasks: Sequence[tuple[str, str]], *, generate_always: bool, choice_texts: bool
) -> list[str]:
    """Why `name` cannot pick the best checkpoint of a run with these (task name, kind) pairs; [] if it can.

    Only metrics computed at every evaluation qualify: generated ones need `eval.generate: always`.
    """
    kinds = dict(tasks)
    every = {t: metric_names(k, generated=generate_always, choice_texts=choice_texts) for t, k in kinds.items()}
    if name == "loss":
        return []
    if name == "mean":
        return [
            f"`mean` averages every task's primary metric, and that of task {t!r} ({k}) is "
            f"{primary_metric(k)}, computed only with generation: set eval.generate=always, or use `loss` "
            "or one `<task>/<metric>`"
            for t, k in kinds.items() if primary_metric(k) not in every[t]
        ]
    task, sep, metric = name.partition("/")
    if not sep:
        return [f"{name!r} is not `mean`, `loss` or `<task>/<metric>` (e.g. {next(iter(kinds))}/accuracy)"]
    if task not in kinds:
        hint = difflib.get_close_matches(task, list(kinds), n=1)
        return [f"no task {task!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; tasks: {', '.join(kinds)}"]
    if metric not in every[task]:
        later = metric_names(kinds[task], generated=True, choice_texts=True)
        why = " (computed only with eval.generate=always)" if metric in later else ""
        return [f"task {task!r} ({kinds[task]}) has no metric {metric!r} at every evaluation{why}; "
                f"choose one of {', '.join(every[task])}"]
    return []


def best_metric_value(
    results: Mapping[str, Mapping[str, float]], name: str, primary: Mapping[str, str]
) -> tuple[float, bool]:
    """(value, higher_is_better) of the best metric in one evaluation's per-task metrics.

    `mean` is the mean of each task's `primary[task]` metric; `loss` the mean of the tasks' validation
    losses (lower is better); `<task>/<metric>` one metric.

    >>> best_metric_value({"a": {"accuracy": 0.5, "loss": 2.0}, "b": {"rougeL": 0.25, "loss": 1.0}}, "mean",
    ...                   {"a": "accuracy", "b": "rougeL"})
    (0.375, True)
    >>> best_metric_value({"a": {"loss": 2.0}, "b": {"loss": 1.0}}, "loss", {})
    (1.5, False)
    """
    if name == "mean":
        return sum(results[t][primary[t]] for t in results) / len(results), True
    if name == "loss":
        return sum(r["loss"] for r in results.values()) / len(results), False
    task, _, metric = name.partition("/")
    return float(results[task][metric]), higher_is_better(metric)


def improves(value: float, best: float | None, higher: bool) -> bool:
    """Whether `value` beats the best so far (the first finite value always does; NaN never does)."""
    if math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value > best if higher else value < best


def primary_metrics(tasks: Sequence[tuple[str, str]]) -> dict[str, str]:
    """task name -> its primary metric, from (task name, kind) pairs."""
    return {name: primary_metric(kind) for name, kind in tasks}


def update_best(
    best: Mapping[str, object] | None, name: str, results: Mapping[str, Mapping[str, float]],
    primary: Mapping[str, str], step: int,
) -> dict[str, object]:
    """The best evaluation so far after the one at `step`: {"metric", "higher_is_better", "step", "value"}.

    >>> b = update_best(None, "t/loss", {"t": {"loss": 2.0}}, {}, step=10)
    >>> update_best(b, "t/loss", {"t": {"loss": 3.0}}, {}, step=20)["step"]
    10
    """
    value, higher = best_metric_value(results, name, primary)
    if best is None or improves(value, best["value"], higher):  # type: ignore[arg-type]
        return {"metric": name, "higher_is_better": higher, "step": step, "value": value}
    return dict(best)
