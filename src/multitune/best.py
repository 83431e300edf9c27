"""The best-metric rule (`eval.best_metric`): which names may pick the best checkpoint of a run, the
value one evaluation gives it, and the best evaluation so far. Pure and torch-free, next to the table of
task kinds it reads: the config validates `eval.best_metric` with it, and the training recipe keeps the
best with it.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence

from multitune.kinds import higher_is_better, metric_names, primary_metric


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
