"""Plots and `report.html` from a run's output folder: a pure function of the files a run writes
(`config.yaml`, `data_stats.json`, `metrics.jsonl`, `eval/`), so it can be rebuilt at any time."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from multitune.io import read_json, read_jsonl, write_bytes_atomic, write_text_atomic
from multitune.report import plots
from multitune.report.html import ReportInputs, TaskSection, render
from multitune.report.results import Summary, load_details, load_predictions, load_summary
from multitune.stall import run_warnings

WORST_ROWS = 10


def write_report(run_dir: str | Path, eval_dir: str = "eval") -> Path:
    """Write `plots/*.png` and `report.html` into `run_dir`; returns the report's path."""
    run_dir = Path(run_dir)
    rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    summary = load_summary(run_dir, eval_dir) if (run_dir / eval_dir / "metrics.json").is_file() else None
    curves = []
    for name, caption, png in (("loss", "Loss", plots.loss_curves(rows)),
                               ("metrics", "Validation metrics", plots.metric_curves(rows))):
        if png is not None:
            write_bytes_atomic(run_dir / "plots" / f"{name}.png", png)
            curves.append((caption, png))
    kinds = _kinds(run_dir)
    sections = []
    records = {task: load_predictions(run_dir, task, eval_dir) for task in (summary.after if summary else [])}
    for task in records:
        assert summary is not None
        section = task_section(task, kinds.get(task, ""), load_details(run_dir, task, eval_dir), records[task])
        section.retention = task in summary.retention
        section.curve_png = _task_curve(rows, task, summary)
        for name, png in (("confusion", section.confusion_png), ("task", section.curve_png)):
            if png:
                write_bytes_atomic(run_dir / "plots" / f"{name}_{task}.png", png)
        sections.append(section)
    trained = {t: k for t, k in kinds.items() if summary and t in summary.after and t not in summary.retention}
    inputs = ReportInputs(
        title=f"multitune report: {run_dir.resolve().name}",
        config_yaml=_read(run_dir / "config.yaml"),
        data_stats=read_json(run_dir / "data_stats.json") if (run_dir / "data_stats.json").is_file() else {},
        summary=summary, curves=curves, tasks=sections,
        warnings=run_warnings(trained, summary.before, summary.after, records) if summary else [],
    )
    write_text_atomic(run_dir / "report.html", render(inputs))
    return run_dir / "report.html"


def _task_curve(rows: Sequence[Mapping[str, Any]], task: str, summary: Summary) -> bytes | None:
    """The task's primary metric and losses over the run, with its zero-shot (and k-shot) level."""
    metric = (summary.primary or {}).get(task)
    if metric is None:
        return None
    levels = [("zero-shot", (summary.before or {}).get(task, {}).get(metric))]
    if summary.shots:
        levels.append((f"{summary.shots_k}-shot", summary.shots.get(task, {}).get(metric)))
    return plots.task_curve(rows, task, metric, levels)


def task_section(task: str, kind: str, details: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> TaskSection:
    section = TaskSection(task, kind, most_confused=list(details.get("most_confused", [])))
    if details.get("confusion"):
        section.confusion_png = plots.confusion_matrix(details["confusion"], details["labels"], f"{task}: confusion")
    section.worst_title, section.worst = worst_errors(records)
    return section


def worst_errors(records: Sequence[Mapping[str, Any]], n: int = WORST_ROWS) -> tuple[str, list[dict[str, Any]]]:
    """The rows most worth reading, with a title saying how they were chosen.

    Closed tasks: wrong answers the model was surest of (highest log-likelihood). Generation tasks: the
    lowest ROUGE-L among generated answers, else the highest reference loss.
    """
    if not records:
        return "", []
    if "gold_score" in records[0]:
        wrong = sorted((r for r in records if not r["correct"]), key=lambda r: -r["score"])[:n]
        generated = any("generated" in r for r in records)
        return ("Worst errors: wrong answers the model was surest of", [
            {"row": r["row"], "input": r["input"], "gold": r["gold"], "prediction": r["prediction"],
             "log-likelihood": r["score"], **({"generated": r.get("generated")} if generated else {})}
            for r in wrong])
    generated = [r for r in records if r.get("prediction") is not None]
    if generated:
        worst = sorted(generated, key=lambda r: r["score"])[:n]
        return ("Worst errors: generated answers with the lowest ROUGE-L", [
            {"row": r["row"], "input": r["input"], "reference": r["gold"], "generated": r["prediction"],
             "ROUGE-L": r["score"]} for r in worst])
    worst = sorted(records, key=lambda r: -(r.get("loss") or 0.0))[:n]
    return ("Hardest references: highest loss per token", [
        {"row": r["row"], "input": r["input"], "reference": r["gold"], "loss": r["loss"]} for r in worst])


def _kinds(run_dir: Path) -> dict[str, str]:
    try:
        stats = json.loads((run_dir / "data_stats.json").read_text(encoding="utf-8"))
        return {task: s["kind"] for task, s in stats.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""




