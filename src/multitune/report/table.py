"""The before/after table printed at the end of a run and by `multitune eval`: its rows and its number
format, which the HTML report and the model card use too."""

from __future__ import annotations

from collections.abc import Mapping

from multitune.kinds import COUNTS

Metrics = Mapping[str, Mapping[str, float | None]]


def rows(before: Metrics | None, after: Metrics) -> list[tuple[str, str, float | None, float | None]]:
    """(task, metric, before, after) for every metric of every task, counts left out; before is None
    where the baseline was not evaluated or lacks the metric."""
    out = []
    for task, metrics in after.items():
        for metric, value in metrics.items():
            if metric in COUNTS:
                continue
            old = before.get(task, {}).get(metric) if before else None
            out.append((task, metric, old, value))
    return out


def before_after(before: Metrics | None, after: Metrics) -> str:
    """A fixed-width table: one line per task and metric, untrained beside tuned; below it, after a blank
    line, the `baseline_note` when the untrained model was evaluated on fewer rows.

    >>> print(before_after({"t": {"accuracy": 0.5}}, {"t": {"accuracy": 0.75, "rows": 4.0}}))
    task  metric    before  after   change
    t     accuracy  0.5000  0.7500  +0.2500
    """
    lines = [("task", "metric", "before", "after", "change")]
    for task, metric, old, new in rows(before, after):
        lines.append((task, metric, number(old), number(new), change(old, new)))
    widths = [max(len(row[i]) for row in lines) for i in range(5)]
    table = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines)
    note = baseline_note(before, after)
    return table + (f"\n\n{note}" if note else "")


def baseline_note(before: Metrics | None, after: Metrics) -> str:
    """What a `before` column evaluated on fewer rows than `after` covers, per task; "" when both cover
    the same rows (or a count is missing). A sampled baseline must not read as the full split's figure.

    >>> baseline_note({"b77": {"rows": 200.0}, "t": {"rows": 9.0}}, {"b77": {"rows": 1998.0}, "t": {"rows": 9.0}})
    'before: the untrained model on fewer rows than after (eval.baseline_max_rows): b77 200 of 1,998'
    """
    fewer = []
    for task, metrics in after.items():
        old, new = (before or {}).get(task, {}).get("rows"), metrics.get("rows")
        if old is not None and new is not None and old < new:
            fewer.append(f"{task} {int(old):,} of {int(new):,}")
    return f"before: the untrained model on fewer rows than after (eval.baseline_max_rows): {', '.join(fewer)}" \
        if fewer else ""


def number(value: float | None) -> str:
    """A metric as every table shows it: 4 decimals, "-" when missing."""
    return "-" if value is None else f"{value:.4f}"


def change(old: float | None, new: float | None) -> str:
    """`new - old` with its sign, "-" when either is missing."""
    return "-" if old is None or new is None else f"{new - old:+.4f}"
