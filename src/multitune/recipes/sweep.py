"""`multitune sweep CONFIG key=v1,v2 [key=...]`: the grid of runs over any config keys, one after another,
each an ordinary run folder under one sweep folder, then one table and one plot.

config + axes -> every run's config, validated before anything trains (all problems at once) -> each run
not yet finished: `multitune train` in a process of its own (its own peak memory, and a crash or a signal
stops the sweep without touching the runs already made) -> the table rebuilt from the run folders ->
`sweep.json` + `report.html` in the sweep folder.

A stopped sweep resumes where it stopped: finished runs are skipped (after checking that they were made
from the same config), an unfinished one resumes from its own checkpoints like any run. `--zip a,b` makes
keys advance together (a learning rate per method) instead of crossing. `--shard K/N` runs
only every N-th run (from the K-th), so N machines can share a sweep; copying their run folders into one
sweep folder and running `--report-only` there makes the whole table.
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multitune import config as config_mod
from multitune.config.schema import RunConfig
from multitune.errors import EXIT_ABORTED, EXIT_PREEMPTED, UserError
from multitune.io import write_json_atomic, write_text_atomic
from multitune.kinds import primary_metrics
from multitune.models import load
from multitune.report import sweep as report
from multitune.train.resume import differences


@dataclass(frozen=True)
class GridRun:
    name: str
    values: dict[str, str]  # axis key -> this run's value, as typed
    overrides: list[str]  # every override `multitune train` gets, output_dir last
    dir: Path


def split_values(text: str) -> list[str]:
    """The values of one axis: split on commas outside brackets and quotes.

    >>> split_values("lora,ia3"), split_values("[q_proj,v_proj],all-linear"), split_values("'a,b',c")
    (['lora', 'ia3'], ['[q_proj,v_proj]', 'all-linear'], ["'a,b'", 'c'])
    """
    out, depth, quote, current = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(current)
            current = ""
            continue
        current += ch
    return [*out, current]


def parse_axes(items: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """(axes: key -> its values, fixed overrides) from `key=v1,v2` items; a key with one value is fixed."""
    axes, fixed = {}, []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"{item!r} is not of the form key=v1,v2", fix="e.g. adapter.method=lora,ia3")
        values = split_values(text)
        if len(values) == 1:
            fixed.append(item)
        elif key in axes:
            raise UserError(f"{key} is given twice", fix=f"list all its values once: {key}=v1,v2,...")
        else:
            axes[key] = values
    if not axes:
        raise UserError("a sweep needs at least one key with several values",
                        fix="e.g. multitune sweep configs/quickstart.yaml adapter.method=lora,ia3")
    return axes, fixed


def run_name(values: dict[str, str]) -> str:
    """A run's folder name from its values: the last part of each key, and the value, made path-safe.

    >>> run_name({"adapter.method": "lora", "train.learning_rate": "1e-4"})
    'method-lora_learning_rate-1e-4'
    """
    parts = [f"{key.split('.')[-1]}-{value}" for key, value in values.items()]
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", "_".join(parts)).strip("_")


def grid(axes: dict[str, list[str]], fixed: list[str], sweep_dir: Path, zipped: list[list[str]] = ()) -> list[GridRun]:
    """Every combination of the axes' values; the keys of a `zipped` group advance together (their i-th
    values make one point: a learning rate per method), so the group is one dimension of the grid."""
    dims = _dimensions(axes, zipped)
    runs = []
    for combo in itertools.product(*(range(len(axes[keys[0]])) for keys in dims)):
        values = {k: axes[k][i] for keys, i in zip(dims, combo, strict=True) for k in keys}
        values = {k: values[k] for k in axes}  # in the order given
        name = run_name(values)
        runs.append(GridRun(name, values, [*fixed, *(f"{k}={v}" for k, v in values.items()),
                                           f"output_dir={sweep_dir / name}"], sweep_dir / name))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise UserError("two runs of the grid get the same folder name", fix="give the values distinct spellings")
    return runs


def _dimensions(axes: dict[str, list[str]], zipped: list[list[str]]) -> list[list[str]]:
    grouped = [k for group in zipped for k in group]
    for group in zipped:
        unknown = [k for k in group if k not in axes]
        if unknown:
            raise UserError(f"--zip names {', '.join(unknown)}, which the sweep gives no values for",
                            fix=f"zip keys of the grid: {', '.join(axes)}")
        if len({len(axes[k]) for k in group}) > 1:
            raise UserError(f"--zip {','.join(group)}: the keys have different numbers of values "
                            f"({', '.join(f'{k}: {len(axes[k])}' for k in group)})", fix="give each the same number")
    if len(set(grouped)) != len(grouped):
        raise UserError("a key is in two --zip groups", fix="put each key in one group")
    return [*zipped, *([k] for k in axes if k not in grouped)]


def load_all(config_path: str, runs: list[GridRun]) -> list[RunConfig]:
    """Every run's config, or one error listing the problems of all of them."""
    configs, problems = [], []
    for r in runs:
        try:
            configs.append(config_mod.load(config_path, r.overrides))
        except UserError as e:
            problems.append(f"{r.name}: {e.what}" + (f" ({e.fix})" if e.fix else ""))
    if problems:
        raise UserError(f"{len(problems)} of the sweep's {len(runs)} runs cannot start:\n" +
                        "\n".join(f"  - {p}" for p in problems), where=config_path)
    return configs


@dataclass(frozen=True)
class SweepResult:
    sweep_dir: Path
    table: str
    ran: list[str]  # runs trained (or resumed) by this call
    skipped: list[str]  # runs already finished
    report: Path


def sweep(config_path: str, items: list[str], sweep_dir: str | Path | None = None, shard: tuple[int, int] = (1, 1),
          report_only: bool = False, zipped: list[list[str]] = ()) -> SweepResult:
    """Run the grid (this machine's shard of it) and write the sweep's table, plot and files."""
    axes, fixed = parse_axes(items)
    base = config_mod.load(config_path, fixed)
    out = Path(sweep_dir) if sweep_dir else Path(f"{base.output_dir.rstrip('/')}-sweep")
    runs = grid(axes, fixed, out, zipped)
    configs = load_all(config_path, runs)
    ran, skipped = [], []
    if not report_only:
        k, n = shard
        for i, (r, cfg) in enumerate(zip(runs, configs, strict=True)):
            if i % n != k - 1:
                continue
            if report.read_row(r.name, r.values, r.dir).finished:
                _refuse_changed(r, cfg)
                skipped.append(r.name)
                continue
            print(f"\n== sweep run {i + 1}/{len(runs)}: {r.name} ({', '.join(f'{a}={v}' for a, v in r.values.items())})",
                  flush=True)
            _train(config_path, r)
            ran.append(r.name)
    text, page = _write(out, config_path, items + [f"--zip {','.join(g)}" for g in zipped], axes, runs, base)
    return SweepResult(out, text, ran, skipped, page)


def _refuse_changed(r: GridRun, cfg: RunConfig) -> None:
    """A finished run is reused only if it was made from this config (a GGUF base's pinned hash aside), as
    the run resolved it for this machine (its config.yaml records the device settings it decided)."""
    saved = (r.dir / "config.yaml").read_text()
    current = config_mod.dump(load.for_this_machine(cfg))
    problems = [p for p in differences(saved, current, {}, {}) if not p.startswith("model.gguf_sha256")]
    if problems:
        raise UserError(f"the finished run {r.dir} was made from another config: " + "; ".join(problems[:3]),
                        fix="delete that run's folder to train it again, or give the sweep another --output-dir")


def _train(config_path: str, r: GridRun) -> None:
    """`multitune train` for one run, in a process of its own; a SIGTERM to the sweep reaches it too (it
    checkpoints and stops), and so does Ctrl-C (the terminal sends it to both)."""
    proc = subprocess.Popen([sys.executable, "-m", "multitune", "train", config_path, *r.overrides])
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        code = proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code in (EXIT_PREEMPTED, EXIT_ABORTED) or code < 0:
        raise UserError(f"the sweep stopped during {r.name}; its last checkpoint is in {r.dir}",
                        fix="run the same sweep command again: finished runs are skipped and this one resumes")
    if code != 0:
        raise UserError(f"the run {r.name} failed (exit code {code}); the runs before it are finished and kept",
                        where=str(r.dir), fix="read its error above, fix it, and run the same sweep command again")


def _write(out: Path, config_path: str, items: list[str], axes: dict[str, list[str]], runs: list[GridRun],
           base: RunConfig) -> tuple[str, Path]:
    """sweep.json, report.html and the text table, from whatever run folders exist."""
    primary = primary_metrics([(t.name, t.kind) for t in base.tasks])
    rows = [report.read_row(r.name, r.values, r.dir) for r in runs]
    cells = report.table(rows, list(axes), primary)
    command = " ".join(["multitune sweep", config_path, *items])
    out.mkdir(parents=True, exist_ok=True)
    best = report.best_runs(rows, primary)
    write_json_atomic(out / "sweep.json", {
        "format": 1, "command": command, "config": config_path, "axes": axes, "primary": primary, "best": best,
        "runs": [_run_json(r, row) for r, row in zip(runs, rows, strict=True)]})
    page = out / "report.html"
    write_text_atomic(page, report.page(f"sweep: {config_path}", command, cells,
                                        report.metric_plot(rows, primary)))
    return report.table_text(cells), page


def _run_json(r: GridRun, row: report.SweepRow) -> dict[str, Any]:
    return {"name": r.name, "values": r.values, "dir": str(r.dir), "overrides": r.overrides,
            "finished": row.finished, "metrics": row.metrics, "stats": row.stats}
