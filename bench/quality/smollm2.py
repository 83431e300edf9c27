"""The quality proof on a real model: LoRA on SmolLM2-135M-Instruct, validation metrics against
wall-clock minutes of `multitune train` (the GGUF's conversion included: each run gets a fresh cache).

    python -m bench.quality.smollm2                        # configs/smollm2-banking77.yaml
    python -m bench.quality.smollm2 --config configs/smollm2-multitask.yaml
    python -m bench.quality.smollm2 key=value ...          # overrides passed on to `multitune train`

The run is a subprocess exactly as a user types it. While it runs, every evaluation row that reaches
`metrics.jsonl` is stamped with the minutes since the command started, which gives the learning curve
(step 0 is the zero-shot baseline). Prints a markdown table per task and writes the JSON to `--out`.
Target for banking77: validation accuracy >= 0.85 within 30 minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, child_env


def run(config: str, overrides: list[str], work: Path) -> dict:
    out = work / Path(config).stem
    env = child_env(MULTITUNE_CACHE=tempfile.mkdtemp(prefix="multitune-bench-cache-"))
    cmd = [sys.executable, "-m", "multitune", "train", config, f"output_dir={out}", *overrides]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    curve: list[dict] = []
    seen = 0
    while True:
        done = proc.poll() is not None
        seen = _stamp_new_rows(out / "metrics.jsonl", seen, curve, (time.perf_counter() - start) / 60)
        if done:
            break
        time.sleep(2)
    if proc.returncode:
        raise SystemExit(f"multitune train exited with {proc.returncode}")
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    return {"command": " ".join(["multitune train", config, *overrides]), "wall_min": (time.perf_counter() - start) / 60,
            "curve": curve, "before": metrics.get("before"), "after": metrics["after"]}


def _stamp_new_rows(path: Path, seen: int, curve: list[dict], minutes: float) -> int:
    """Append the evaluation rows written since the last look, stamped with `minutes`; returns the new
    number of lines seen (a half-written last line waits for the next look)."""
    if not path.is_file():
        return seen
    lines = path.read_text().splitlines(keepends=True)
    complete = [x for x in lines[seen:] if x.endswith("\n")]
    for line in complete:
        row = json.loads(line)
        if any(k.startswith("eval/") for k in row):
            curve.append({"minutes": round(minutes, 2), **row})
    return seen + len(complete)


def table(result: dict) -> str:
    tasks = sorted(result["after"])
    head = "| step | minutes | " + " | ".join(f"{t} {m}" for t in tasks for m in _metrics(result, t)) + " |"
    rows = [head, "|" + "---|" * (2 + sum(len(_metrics(result, t)) for t in tasks))]
    for row in result["curve"]:
        cells = [str(row["step"]), f"{row['minutes']:.1f}"]
        cells += [_fmt(row.get(f"eval/{t}/{m}")) for t in tasks for m in _metrics(result, t)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _metrics(result: dict, task: str) -> list[str]:
    return [m for m in ("accuracy", "macro_f1", "rougeL", "loss") if m in result["after"][task]]


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/smollm2-banking77.yaml")
    p.add_argument("--work", default=str(REPO / "runs" / "bench-smollm2"))
    p.add_argument("--out", help="JSON results (default: WORK/<config>.json)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args()
    result = run(args.config, args.overrides, Path(args.work))
    out = Path(args.out or Path(args.work) / f"{Path(args.config).stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\n{result['command']}: {result['wall_min']:.1f} min\n\n{table(result)}")


if __name__ == "__main__":
    main()
