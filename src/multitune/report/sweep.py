"""A sweep's table, plot and page, rebuilt from its run folders alone: each run's `eval/metrics.json` (each
task's primary metric after training) and `run_stats.json` (trainable parameters, wall time, tokens/s, peak
memory, adapter size). Whatever folders exist make the table, so runs made on other machines and copied in
count like the rest. The best run of each task (its primary metric, higher or lower as the metric says) is
marked."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multitune.kinds import higher_is_better
from multitune.report.html import STYLE
from multitune.report.plots import sweep_bars
from multitune.report.results import load_summary
from multitune.report.run_stats import load_run_stats

STAT_COLUMNS = [("trainable_params", "trainable"), ("wall_seconds", "wall"), ("tokens_per_s", "tokens/s"),
                ("peak_memory_bytes", "peak memory"), ("adapter_bytes", "adapter size")]


@dataclass(frozen=True)
class SweepRow:
    name: str
    values: dict[str, str]  # grid key -> this run's value, as given on the command line
    finished: bool
    metrics: dict[str, float | None]  # task -> primary metric after training
    stats: dict[str, Any]  # run_stats.json ({} until the run has finished)


def read_row(name: str, values: Mapping[str, str], run_dir: Path) -> SweepRow:
    """A run's row: finished when it wrote both its metrics and its stats."""
    stats = load_run_stats(run_dir) if run_dir.is_dir() else None
    if stats is None or not (run_dir / "eval" / "metrics.json").is_file():
        return SweepRow(name, dict(values), False, {}, {})
    summary = load_summary(run_dir)
    primary = summary.primary or {}
    metrics = {task: summary.after.get(task, {}).get(metric) for task, metric in primary.items()}
    return SweepRow(name, dict(values), True, metrics, stats)


def best_runs(rows: Sequence[SweepRow], primary: Mapping[str, str]) -> dict[str, str]:
    """Task -> name of the finished run with the best primary metric (the first one on a tie).

    >>> rows = [SweepRow("a", {}, True, {"t": 0.5}, {}), SweepRow("b", {}, True, {"t": 0.7}, {})]
    >>> best_runs(rows, {"t": "accuracy"})
    {'t': 'b'}
    """
    out = {}
    for task, metric in primary.items():
        scored = [(r.metrics[task], i, r.name) for i, r in enumerate(rows) if r.metrics.get(task) is not None]
        if scored:
            sign = 1 if higher_is_better(metric) else -1
            out[task] = max(scored, key=lambda s: (sign * s[0], -s[1]))[2]
    return out


def stat_text(key: str, value: Any) -> str:
    """A stat as the table shows it.

    >>> stat_text("wall_seconds", 754.0), stat_text("peak_memory_bytes", 3 * 2**30), stat_text("adapter_bytes", 2**21)
    ('12.6 min', '3.00 GiB', '2.0 MiB')
    >>> stat_text("adapter_bytes", 46_336)
    '45 KiB'
    """
    if value is None:
        return "-"
    if key == "wall_seconds":
        return f"{value / 60:.1f} min" if value >= 60 else f"{value:.0f} s"
    if key == "peak_memory_bytes":
        return f"{value / 2**30:.2f} GiB"
    if key == "adapter_bytes":
        return f"{value / 2**20:.1f} MiB" if value >= 2**20 else f"{value / 2**10:.0f} KiB"
    if key == "tokens_per_s":
        return f"{value:.0f}"
    return f"{value:,}"


def table(rows: Sequence[SweepRow], keys: Sequence[str], primary: Mapping[str, str]) -> list[list[str]]:
    """Header and rows of the table: run, the grid's values, each task's primary metric (* marks the best of
    the task), then the stats."""
    best = best_runs(rows, primary)
    header = ["run", *keys, *(f"{task} {metric}" for task, metric in primary.items()), *(h for _, h in STAT_COLUMNS)]
    body = []
    for r in rows:
        cells = [r.name + ("" if r.finished else " (not finished)"), *(r.values.get(k, "") for k in keys)]
        for task in primary:
            value = r.metrics.get(task)
            cells.append("-" if value is None else f"{value:.4f}" + (" *" if best.get(task) == r.name else ""))
        cells += [stat_text(k, r.stats.get(k)) if r.finished else "-" for k, _ in STAT_COLUMNS]
        body.append(cells)
    return [header, *body]


def table_text(cells: Sequence[Sequence[str]]) -> str:
    """The table as aligned text columns, numbers right-aligned."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 or n == 0 else c.rjust(w) for i, (c, w) in
                               enumerate(zip(row, widths, strict=True))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n(* the best run of each task)"


def metric_plot(rows: Sequence[SweepRow], primary: Mapping[str, str]) -> bytes | None:
    """Grouped bars: each finished run's primary metric, per task."""
    done = [r for r in rows if r.finished]
    if not done or not primary:
        return None
    return sweep_bars([r.name for r in done], [f"{task}\n{metric}" for task, metric in primary.items()],
                      [[r.metrics.get(task) for task in primary] for r in done])


def page(title: str, command: str, cells: Sequence[Sequence[str]], png: bytes | None) -> str:
    """`report.html` of the sweep: the command, the table and the plot, self-contained."""
    import base64

    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td{' class=num' if i else ''}>{e(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in cells[1:])
    figure = (f'<img alt="primary metric per run" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
              if png else "<p class=muted>No run has finished yet.</p>")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{e(title)}</title><style>{STYLE}</style></head>"
            f"<body><h1>{e(title)}</h1><pre>{e(command)}</pre><h2>Runs</h2><table><tr>{head}</tr>{body}</table>"
            f"<p class=muted>* the best run of each task. Each run is an ordinary run folder with its own "
            f"report.html.</p><h2>Plot</h2>{figure}</body></html>")
