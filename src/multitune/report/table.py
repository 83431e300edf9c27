"""The before/after table printed at the end of a run and by `multitune eval`: its rows and its number
format, which the HTML report and the model card use too."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from multitune.kinds import COUNTS

Metrics = Mapping[str, Mapping[str, float | None]]
Row = tuple[str, str, float | None, float | None]
RETENTION = "retention (evaluated, never trained; a fall is what training cost):"


def rows(before: Metrics | None, after: Metrics) -> list[Row]:
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


def before_after(before: Metrics | None, after: Metrics, shots: Metrics | None = None, shots_k: int = 0,
                 retention: Sequence[str] = ()) -> str:
    """A fixed-width table: one line per task and metric, untrained beside tuned (and, with `shots`, the
    untrained model prompted with `shots_k` examples between them); the `retention` tasks (evaluated, never
    trained) under their own heading; below, after a blank line, what the baseline columns cover.

    >>> print(before_after({"t": {"accuracy": 0.5}}, {"t": {"accuracy": 0.75, "rows": 4.0}}))
    task  metric    before  after   change
    t     accuracy  0.5000  0.7500  +0.2500
    >>> print(before_after({"t": {"accuracy": 0.5}, "r": {"accuracy": 0.6}}, {"t": {"accuracy": 0.75},
    ...                    "r": {"accuracy": 0.55}}, shots={"t": {"accuracy": 0.625}}, shots_k=3, retention=["r"]))
    task  metric    zero-shot  3-shot  after   change
    t     accuracy  0.5000     0.6250  0.7500  +0.2500
    retention (evaluated, never trained; a fall is what training cost):
    r     accuracy  0.6000     -       0.5500  -0.0500
    <BLANKLINE>
    3-shot: the untrained model with 3 training examples of the task as earlier chat turns, on the baseline rows; no prompt was cut to data.max_seq_len
    """
    head = ["task", "metric", "zero-shot" if shots else "before", *([f"{shots_k}-shot"] if shots else []), "after",
            "change"]
    lines: list[list[str] | str] = [head]
    for task, metric, old, new in order_rows(before, after, retention):
        if task in retention and RETENTION not in lines:
            lines.append(RETENTION)
        shot = [number(shot_value(shots, task, metric))] if shots else []
        lines.append([task, metric, number(old), *shot, number(new), change(old, new)])
    cells = [line for line in lines if isinstance(line, list)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    table = "\n".join(line if isinstance(line, str) else
                      "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)
    notes = [n for n in (baseline_note(before, after), shots_note(shots, shots_k)) if n]
    return table + "".join(f"\n\n{n}" for n in notes)


def order_rows(before: Metrics | None, after: Metrics, retention: Sequence[str] = ()) -> list[Row]:
    """`rows`, the trained tasks first and the retention tasks after them (each in `after`'s order)."""
    return sorted(rows(before, after), key=lambda r: r[0] in retention)


def shot_value(shots: Metrics | None, task: str, metric: str) -> float | None:
    """A task's metric under the k-shot prompt; None where it was not evaluated."""
    return (shots or {}).get(task, {}).get(metric)


def shots_note(shots: Metrics | None, k: int) -> str:
    """What the k-shot column is, and how many of its prompts were cut to data.max_seq_len, per task.

    >>> shots_note({"a": {"rows": 50.0, "truncated": 0.0}, "b": {"rows": 50.0, "truncated": 12.0}}, 3)
    '3-shot: the untrained model with 3 training examples of the task as earlier chat turns, on the baseline rows; prompts cut to data.max_seq_len (oldest turns first): b 12 of 50'
    """
    if not shots:
        return ""
    cut = [f"{t} {int(m['truncated']):,} of {int(m.get('rows') or 0):,}" for t, m in shots.items()
           if m.get("truncated")]
    return (f"{k}-shot: the untrained model with {k} training examples of the task as earlier chat turns, on the "
            "baseline rows; " + ("prompts cut to data.max_seq_len (oldest turns first): " + ", ".join(cut)
                                   if cut else "no prompt was cut to data.max_seq_len"))


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
