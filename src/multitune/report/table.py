"""The before/after table printed at the end of a run."""

from __future__ import annotations

from collections.abc import Mapping


def before_after(before: Mapping[str, Mapping[str, float]] | None, after: Mapping[str, Mapping[str, float]]) -> str:
    """A fixed-width table: one line per task and metric, untrained beside tuned.

    >>> print(before_after({"t": {"accuracy": 0.5}}, {"t": {"accuracy": 0.75}}))
    task  metric    before  after   change
    t     accuracy  0.5000  0.7500  +0.2500
    """
    lines = [("task", "metric", "before", "after", "change")]
    for task, metrics in after.items():
        for metric, value in metrics.items():
            if metric == "rows":
                continue
            old = before.get(task, {}).get(metric) if before else None
            lines.append((
                task, metric, "-" if old is None else f"{old:.4f}", f"{value:.4f}",
                "-" if old is None else f"{value - old:+.4f}",
            ))
    widths = [max(len(row[i]) for row in lines) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines)
