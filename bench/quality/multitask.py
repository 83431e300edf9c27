"""The multi-task proof table (issue 26): per task, zero-shot | k-shot | one single-task LoRA | the joint LoRA,
on the same validation rows, and the retention rows (each single-task adapter scored on the other tasks).

    python -m bench.quality.multitask                            # configs/smollm2-multitask.yaml, ~3 h alone
    python -m bench.quality.multitask --smoke --work /tmp/proof  # a few steps and rows: the plumbing only
    python -m bench.quality.multitask key=value ...              # overrides for every run (e.g. seed=1)

Runs one `multitune train` after another, each a subprocess exactly as a user types it, in WORK/<cell>/:

- `joint`: the config as shipped. Its baseline gives the zero-shot and k-shot columns (the config sets
  `eval.baseline_shots`) on the rows every run evaluates (`eval.max_rows`, spread evenly).
- `single-<task>`, one per task: the same config with every other task `train=false` (evaluated only),
  so its final evaluation gives that task's single-task figure and the others' retention figures. No
  baseline (the joint run's is the same model on the same rows).

Resumable: a cell whose folder holds `bench.json` (written when its run finished) is not run again;
delete the folder to redo it. `bench.json` records the command, the minutes it took and the machine's
load average before and after (a loaded machine makes the minutes worthless, not the metrics). The table
and the targets are printed at the end (markdown), and written to WORK/table.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import REPO, child_env, stopwatch

CONFIG = "configs/smollm2-multitask.yaml"
# Few steps and rows: proves every cell runs and the table fills, says nothing about quality.
SMOKE = ["train.max_steps=2", "eval.max_rows=4", "eval.baseline_max_rows=4", "eval.generate_max_rows=2",
         "eval.max_new_tokens=8", "eval.every_steps=null", "checkpoint.every_minutes=null"]
SMOKE_ROWS = 60  # tasks.<name>.max_rows in a smoke run


def cells(config: dict[str, Any]) -> dict[str, list[str]]:
    """cell name -> the overrides that make it from the config: `joint`, then `single-<task>` per task."""
    names = [t["name"] for t in config["tasks"]]
    out = {"joint": []}
    for name in names:
        others = [o for o in names if o != name]
        out[f"single-{name}"] = ["eval.baseline=false", "eval.baseline_shots=0", "eval.best_metric=null",
                                 f"tasks.{name}.train=true",
                                 *[f"tasks.{o}.{k}" for o in others for k in
                                   ("train=false", "weight=1.0", "max_examples_per_epoch=null")]]
    return out


def run_cell(name: str, config: str, overrides: list[str], work: Path) -> dict[str, Any]:
    """Run one cell unless its folder already holds `bench.json`; returns that record."""
    out = work / name
    record = out / "bench.json"
    if record.is_file():
        print(f"{name}: done before, {record}")
        return json.loads(record.read_text())
    cmd = ["multitune", "train", config, f"output_dir={out}", *overrides]
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    with stopwatch() as clock:
        subprocess.run([sys.executable, "-m", "multitune", *cmd[1:]], cwd=REPO, env=child_env(), check=True)
    done = {"command": " ".join(cmd), "minutes": clock.minutes, "load_before": clock.load_before,
            "load_after": clock.load_after}
    record.write_text(json.dumps(done, indent=2))
    return done


def metrics(work: Path, cell: str) -> dict[str, Any]:
    return json.loads((work / cell / "eval" / "metrics.json").read_text())


def primary(joint: dict[str, Any]) -> dict[str, str]:
    return joint["primary"]  # task -> its primary metric (accuracy, rougeL)


def table(work: Path, records: dict[str, dict[str, Any]]) -> str:
    """The proof table, the retention table, the minutes and the targets, as markdown."""
    joint = metrics(work, "joint")
    tasks, k = list(joint["after"]), joint.get("baseline_shots", 0)
    main = [f"| task | metric | zero-shot | {k}-shot | single-task LoRA | joint LoRA | joint - single |",
            "|---|---|---|---|---|---|---|"]
    singles = {t: metrics(work, f"single-{t}")["after"] for t in tasks}
    for t in tasks:
        m = primary(joint)[t]
        zero, shot = _get(joint["before"], t, m), _get(joint.get("shots"), t, m)
        single, both = _get(singles[t], t, m), _get(joint["after"], t, m)
        main.append(f"| {t} | {m} | {_f(zero)} | {_f(shot)} | {_f(single)} | {_f(both)} | {_d(single, both)} |")
    retention = ["| adapter | " + " | ".join(f"{t} {primary(joint)[t]}" for t in tasks) + " |",
                 "|---|" + "---|" * len(tasks),
                 "| none (zero-shot) | " + " | ".join(_f(_get(joint["before"], t, primary(joint)[t])) for t in tasks) + " |"]
    for s in tasks:
        retention.append(f"| single-task {s} | " + " | ".join(
            ("**" + _f(_get(singles[s], t, primary(joint)[t])) + "**") if t == s else
            _f(_get(singles[s], t, primary(joint)[t])) for t in tasks) + " |")
    retention.append("| joint | " + " | ".join(_f(_get(joint["after"], t, primary(joint)[t])) for t in tasks) + " |")
    runs = ["| run | minutes | load average before / after | command |", "|---|---|---|---|"]
    runs += [f"| {c} | {r['minutes']} | {r['load_before']} / {r['load_after']} | `{r['command']}` |"
             for c, r in records.items()]
    rows = {t: int(_get(joint["after"], t, "rows") or 0) for t in tasks}
    cut = {t: int(_get(joint.get("shots"), t, "truncated") or 0) for t in tasks}
    notes = [f"Validation rows per task (the same in every cell): {rows}.",
             f"{k}-shot prompts cut to data.max_seq_len: {cut}." if k else "No k-shot baseline (eval.baseline_shots 0)."]
    return "\n".join([*main, "", *retention, "", *runs, "", *notes, "", targets(joint, singles, records)])


def targets(joint: dict[str, Any], singles: dict[str, dict[str, Any]], records: dict[str, dict[str, Any]]) -> str:
    """The issue's targets, each with its verdict."""
    lines = ["Targets:"]
    for t, m in primary(joint).items():
        single, both = _get(singles[t], t, m), _get(joint["after"], t, m)
        zero, shot = _get(joint["before"], t, m), _get(joint.get("shots"), t, m)
        if m == "accuracy" and single is not None and both is not None:
            lines.append(f"- {t}: joint within 0.02 of single-task: {_ok(both >= single - 0.02)} ({_d(single, both)})")
        prompted = [x for x in (zero, shot) if x is not None]
        if prompted and both is not None:
            lines.append(f"- {t}: joint at least 0.05 above zero-shot and k-shot: {_ok(both >= max(prompted) + 0.05)} "
                         f"({_f(both)} against {_f(max(prompted))})")
    b77 = _get(joint["after"], "banking77", "accuracy")
    if b77 is not None:
        lines.append(f"- banking77 accuracy >= 0.85: {_ok(b77 >= 0.85)} ({_f(b77)})")
    if "joint" in records:
        lines.append(f"- joint run <= 45 minutes: {_ok(records['joint']['minutes'] <= 45)} "
                     f"({records['joint']['minutes']} min; load average {records['joint']['load_before']})")
    return "\n".join(lines)


def _get(m: dict[str, Any] | None, task: str, metric: str) -> float | None:
    value = (m or {}).get(task, {}).get(metric)
    return None if value is None else float(value)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _d(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{b - a:+.4f}"


def _ok(passed: bool) -> str:
    return "met" if passed else "MISSED"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--work", default=str(REPO / "runs" / "proof-multitask"))
    p.add_argument("--smoke", action="store_true", help="2 steps, 4 rows, 60 source rows a task: the plumbing only")
    p.add_argument("--only", nargs="*", help="run only these cells (joint, single-<task>); the table needs all")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args(argv)
    from multitune.config.load import apply_overrides, read_yaml

    raw = apply_overrides(read_yaml(REPO / args.config), args.overrides)
    extra = [*args.overrides]
    if args.smoke:
        extra += [*SMOKE, *[f"tasks.{t['name']}.max_rows={SMOKE_ROWS}" for t in raw["tasks"]]]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    records = {name: run_cell(name, args.config, [*extra, *own], work)
               for name, own in cells(raw).items() if not args.only or name in args.only}
    if args.only:
        return 0
    text = table(work, records)
    if args.smoke:
        text = "SMOKE RUN (2 steps, 4 rows a task): it proves the plumbing; none of these figures is a result.\n\n" + text
    (work / "table.md").write_text(text + "\n")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
