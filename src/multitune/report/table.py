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
    """A fixed-width table: one line per task and metric, untrained beside tuned.

    >>> print(before_after({"t": {"accuracy": 0.5}}, {"t": {"accuracy": 0.75, "rows": 4.0}}))
    task  metric    before  after   change
    t     accuracy  0.5000  0.7500  +0.2500
    """
    lines = [("task", "metric", "before", "after", "change")]
    for task, metric, old, new in rows(before, after):
        lines.append((task, metric, number(old), number(new), change(old, new)))
    widths = [max(len(row[i]) for row in lines) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines)


def number(value: float | None) -> str:
    """A metric as every table shows it: 4 decimals, "-" when missing."""
    return "-" if value is None else f"{value:.4f}"


def change(old: float | None, new: float | None) -> str:
    """`new - old` with its sign, "-" when either is missing."""
    return "-" if old is None or new is None else f"{new - old:+.4f}"
