"""`report.html`: one self-contained page (styles inline, images embedded as data URIs, no scripts, no
links out) with the results table, the curves, confusion matrices, the worst errors, the data statistics
and the config. Every piece of text from the run is HTML-escaped."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from multitune.report.results import Summary
from multitune.report.table import baseline_note, change, number, order_rows, shot_value, shots_note

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.primary td{font-weight:600}.up{color:#17803d}.down{color:#b42318}
img{max-width:100%;height:auto;border:1px solid #eee}pre{background:#f6f8fa;padding:1em;overflow:auto}
.muted{color:#666}.warn{background:#fff4e5;border-left:4px solid #b54708;padding:.5em 1em;margin:1em 0}
tr.heading th{background:#fafafa;font-weight:normal;font-style:italic}
"""
INPUT_CHARS = 300  # longer inputs are cut in the error tables


@dataclass
class TaskSection:
    name: str
    kind: str
    confusion_png: bytes | None = None
    most_confused: list[dict[str, Any]] = field(default_factory=list)
    worst: list[dict[str, Any]] = field(default_factory=list)
    worst_title: str = ""
    curve_png: bytes | None = None  # its primary metric and losses over the run
    retention: bool = False  # evaluated, never trained


@dataclass
class ReportInputs:
    title: str
    config_yaml: str
    data_stats: Mapping[str, Any]
    summary: Summary | None
    curves: Sequence[tuple[str, bytes]]  # (caption, png)
    tasks: Sequence[TaskSection]
    warnings: Sequence[str] = ()  # trained tasks stuck at their zero-shot value while their loss fell


def render(r: ReportInputs) -> str:
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(r.title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(r.title)}</h1>",
        _results(r.summary, r.warnings),
        "<h2>Curves</h2>" + ("".join(_figure(c, png) for c, png in r.curves) or "<p class='muted'>no curves logged</p>"),
        *(_task(t) for t in r.tasks),
        "<h2>Data</h2>" + _data(r.data_stats),
        f"<h2>Config</h2><pre>{_e(r.config_yaml)}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _results(summary: Summary | None, warnings: Sequence[str] = ()) -> str:
    if summary is None:
        return "<h2>Results</h2><p class='muted'>no evaluation results (eval/metrics.json) yet</p>"
    head = "<h2>Results</h2><p>Each task on its held-out rows: <b>before</b> is the untrained model, <b>after</b> "
    head += f"the {_e(summary.model)} model" + (f" at step {summary.final_step}" if summary.final_step else "")
    head += ". The bold row is the task's primary metric.</p>"
    head += "".join(f"<p class=warn><b>Warning:</b> {_e(w)}</p>" for w in warnings)
    for note in (baseline_note(summary.before, summary.after), shots_note(summary.shots, summary.shots_k)):
        if note:
            head += f"<p>{_e(note)}, spread evenly.</p>" if note.startswith("before") else f"<p>{_e(note)}.</p>"
    if summary.best:
        b = summary.best
        head += (f"<p>Best evaluation by <code>{_e(b['metric'])}</code> ({'higher' if b['higher_is_better'] else 'lower'}"
                 f" is better): {number(b['value'])} at step {b['step']}.</p>")
    primary = summary.primary or {}
    shots = f"<th>{summary.shots_k}-shot</th>" if summary.shots else ""
    lines = [f"<table><tr><th>task</th><th>metric</th><th>before</th>{shots}<th>after</th><th>change</th></tr>"]
    headed = False
    for task, metric, old, new in order_rows(summary.before, summary.after, summary.retention):
        if task in summary.retention and not headed:
            headed = True
            lines.append(f"<tr class=heading><th colspan={6 if shots else 5}>Retention: evaluated, never trained "
                         "(a fall is what training cost the base model)</th></tr>")
        delta = None if old is None or new is None else new - old
        cls = "" if delta is None else ("up" if delta > 0 else "down" if delta < 0 else "")
        shown = "" if delta is None else change(old, new)
        shot = f"<td class=num>{number(shot_value(summary.shots, task, metric))}</td>" if shots else ""
        lines.append(
            f"<tr{' class=primary' if primary.get(task) == metric else ''}><td>{_e(task)}</td><td>{_e(metric)}</td>"
            f"<td class=num>{number(old)}</td>{shot}<td class=num>{number(new)}</td><td class='num {cls}'>{shown}</td></tr>"
        )
    return head + "".join(lines) + "</table>"


def _task(t: TaskSection) -> str:
    role = f"{t.kind}, retention: evaluated, never trained" if t.retention else t.kind
    out = [f"<h2>Task {_e(t.name)} <span class=muted>({_e(role)})</span></h2>"]
    if t.curve_png:
        out.append(_figure(f"{t.name}: its primary metric and its losses over the run", t.curve_png))
    if t.confusion_png:
        out.append(_figure(f"Confusion matrix of {t.name} (after training)", t.confusion_png))
    if t.most_confused:
        out.append("<h3>Most confused pairs</h3><table><tr><th>gold</th><th>predicted as</th><th>rows</th></tr>")
        out += [f"<tr><td>{_e(p['gold'])}</td><td>{_e(p['predicted'])}</td><td class=num>{p['count']}</td></tr>"
                for p in t.most_confused]
        out.append("</table>")
    if t.worst:
        cols = list(t.worst[0])
        out.append(f"<h3>{_e(t.worst_title)}</h3><table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr>")
        for row in t.worst:
            out.append("<tr>" + "".join(_cell(row.get(c)) for c in cols) + "</tr>")
        out.append("</table>")
    return "".join(out)


def _data(stats: Mapping[str, Any]) -> str:
    if not stats:
        return "<p class='muted'>no data statistics (data_stats.json)</p>"
    head = ("<table><tr><th>task</th><th>kind</th><th>source</th><th>rows</th><th>train examples</th>"
            "<th>val examples</th><th>train tokens</th><th>answer tokens</th><th>truncated</th><th>dropped</th>"
            "<th>labels</th></tr>")
    lines = []
    for name, s in stats.items():
        tr, va = s.get("train", {}), s.get("val", {})
        cells = [name, s.get("kind"), s.get("source"), s.get("rows"), tr.get("examples"), va.get("examples"),
                 tr.get("tokens"), tr.get("answer_tokens"), tr.get("truncated", 0) + va.get("truncated", 0),
                 tr.get("dropped_too_long", 0) + va.get("dropped_too_long", 0), len(s.get("labels", [])) or ""]
        lines.append("<tr>" + "".join(_cell(c) for c in cells) + "</tr>")
    return head + "".join(lines) + "</table>"


def _figure(caption: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{data}'><figcaption>{_e(caption)}</figcaption></figure>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"<td class=num>{number(value)}</td>"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"<td class=num>{value}</td>"
    text = "" if value is None else str(value)
    if len(text) > INPUT_CHARS:
        text = text[:INPUT_CHARS] + "…"
    return f"<td>{_e(text)}</td>"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
