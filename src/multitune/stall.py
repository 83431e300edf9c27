"""The warning a run owes its user when a trained task's metric stays at its zero-shot value while its loss
falls: the model has learnt the answer's format (one letter, then the end of the turn) but not the
answers. Pure and torch-free, on the floor of `kinds`: the training recipe prints it at every evaluation
and the report shows it, both from the same per-task metrics (`eval/metrics.json`) and predictions.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

from multitune.kinds import kind

LOSS_FALL = 0.25
"""The validation loss must have fallen by at least this share of its zero-shot value."""
OPEN_MARGIN = 0.02
"""An open task's primary metric (ROUGE-L) within this of its zero-shot value has not moved."""
COLLAPSE_SHARE = 0.5
"""A closed task whose most frequent prediction is at least this share of the rows has collapsed."""


def margin(kind_name: str, before: float, rows: float | None) -> float:
    """How far above its zero-shot value a task's primary metric must be to have moved: two standard
    errors of an accuracy of `before` on `rows` rows (at least 0.01) for closed kinds, `OPEN_MARGIN` else.

    >>> round(margin("multiple_choice", 0.225, 200), 4)
    0.0591
    >>> margin("summarization", 0.15, 100)
    0.02
    """
    if not kind(kind_name).closed:
        return OPEN_MARGIN
    n = max(rows or 1.0, 1.0)
    return max(2 * math.sqrt(before * (1 - before) / n), 0.01)


def stall_warning(
    task: str, kind_name: str, before: Mapping[str, float | None], now: Mapping[str, float | None],
    predictions: Sequence[str] = (), gold: Sequence[str] = (),
) -> str | None:
    """The warning for `task` when its primary metric now is within `margin` of (or below) its zero-shot
    value while its validation loss fell by `LOSS_FALL` or more; None otherwise, or when a figure is
    missing. `predictions` and `gold` (a closed task's answers, row by row) add a collapse onto one answer.

    >>> print(stall_warning("csqa", "multiple_choice", {"accuracy": 0.225, "loss": 5.82},
    ...                     {"accuracy": 0.215, "loss": 0.81, "rows": 200.0}, ["C"] * 96 + ["A"] * 4, list("ABCDE") * 20))
    csqa: accuracy 0.2150 is still at its zero-shot value 0.2250 (a gain under 0.0591 is within noise on 200 rows) while its validation loss fell from 5.82 to 0.81: the model learnt the answer's format, not the answers. It answers 'C' to 96% of the rows (20% of the gold answers). Check the trained tokens (`multitune data preview`), the learning rate and the task's share of the mixture.
    """
    metric = kind(kind_name).primary_metric
    old, new = before.get(metric), now.get(metric)
    old_loss, new_loss = before.get("loss"), now.get("loss")
    if None in (old, new, old_loss, new_loss):
        return None
    assert old is not None and new is not None and old_loss is not None and new_loss is not None
    need = margin(kind_name, old, now.get("rows"))
    if new - old >= need or new_loss > old_loss * (1 - LOSS_FALL):
        return None
    rows = f" on {int(now['rows'])} rows" if now.get("rows") else ""
    text = (f"{task}: {metric} {new:.4f} is still at its zero-shot value {old:.4f} (a gain under {need:.4f} "
            f"is within noise{rows}) while its validation loss fell from {old_loss:.2f} to {new_loss:.2f}: the "
            "model learnt the answer's format, not the answers.")
    if predictions:
        answer, count = Counter(predictions).most_common(1)[0]
        if count / len(predictions) >= COLLAPSE_SHARE:
            share = sum(g == answer for g in gold) / len(gold) if gold else None
            text += (f" It answers {answer!r} to {count / len(predictions):.0%} of the rows"
                     + (f" ({share:.0%} of the gold answers)." if share is not None else "."))
    return text + (" Check the trained tokens (`multitune data preview`), the learning rate and the task's "
                   "share of the mixture.")


def run_warnings(
    kinds: Mapping[str, str], before: Mapping[str, Mapping[str, float | None]] | None,
    now: Mapping[str, Mapping[str, float | None]], records: Mapping[str, Sequence[Mapping[str, object]]],
) -> list[str]:
    """`stall_warning` for each task of `kinds` (task -> kind: the trained tasks) that has a zero-shot
    figure; `records` are its evaluated rows (`eval/<task>/predictions.jsonl`), whose predictions and
    gold answers a closed task's warning reads."""
    out = []
    for task, kind_name in kinds.items():
        if not before or task not in before or task not in now:
            continue
        rows = records.get(task, ()) if kind(kind_name).closed else ()
        answers = [str(r["prediction"]) for r in rows if r.get("prediction") is not None]
        gold = [str(r["gold"]) for r in rows if r.get("gold") is not None]
        warning = stall_warning(task, kind_name, before[task], now[task], answers, gold)
        if warning:
            out.append(warning)
    return out
