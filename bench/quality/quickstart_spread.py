"""How far the quickstart's table moves with the CPU's rounding: the shipped `configs/quickstart.yaml`
run once per kernel and thread setting (seed 0), and once per seed (1-4), each in a fresh process.

    python -m bench.quality.quickstart_spread [--root /tmp/quickstart-spread] [--only default,seed1]
                                            [--set train.epochs=2 ...]

torch's CPU wheel does matmuls in MKL and the rest in ATen's own kernels; these settings make this CPU
round the way other CPUs do: MKL restricted to SSE4.2 or AVX2 code paths, MKL's conditional numerical
reproducibility mode, ATen's generic and AVX2 kernels (no AVX-512), and one or two OpenMP threads. A run
whose folder already holds `eval/metrics.json` is not run again (the sweep resumes). Prints, per table
row, the minimum and maximum over the kernel settings and over the seeds, and writes `spread.json` into
the root. `tests/test_readme.py` takes its tolerances from these figures (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.common import REPO, child_env

KERNELS: dict[str, dict[str, str]] = {
    "default": {},
    "mkl-sse4_2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "mkl-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "mkl-cbwr-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "omp-1": {"OMP_NUM_THREADS": "1"},
    "omp-2": {"OMP_NUM_THREADS": "2"},
}
SEEDS = [1, 2, 3, 4]


def settings(extra: list[str]) -> dict[str, tuple[dict[str, str], list[str]]]:
    """name -> (environment, overrides) of every run of the spread; `extra` overrides go to every run."""
    out = {name: (env, ["seed=0", *extra]) for name, env in KERNELS.items()}
    out.update({f"seed{s}": ({}, [f"seed={s}", *extra]) for s in SEEDS})
    return out


def run_one(root: Path, name: str, env: dict[str, str], overrides: list[str]) -> dict:
    """The run's eval/metrics.json, training it first unless it is already there."""
    out = root / name
    done = out / "eval" / "metrics.json"
    root.mkdir(parents=True, exist_ok=True)
    if not done.is_file():
        cmd = [sys.executable, "-m", "multitune", "train", str(REPO / "configs" / "quickstart.yaml"),
               f"output_dir={out}", "--force", *overrides]
        print(f"{name}: {' '.join(f'{k}={v}' for k, v in env.items()) or '(default)'} {' '.join(overrides)}",
              flush=True)
        log = root / f"{name}.log"  # the run's progress bars and messages, not this table's
        with log.open("w") as f:
            done_ok = subprocess.run(cmd, env=child_env(**env),
                                     stdout=f, stderr=subprocess.STDOUT).returncode == 0
        if not done_ok:
            raise SystemExit(f"{name} failed; its output is in {log}")
    return json.loads(done.read_text())


def spread(runs: dict[str, dict], names: list[str]) -> dict[str, dict[str, list[float]]]:
    """"task/metric" -> {"before": [min, max], "after": [min, max]} over the named runs."""
    out: dict[str, dict[str, list[float]]] = {}
    for when in ("before", "after"):
        for name in names:
            for task, metrics in runs[name][when].items():
                for metric, value in metrics.items():
                    if value is None or metric.endswith("rows"):
                        continue
                    lo_hi = out.setdefault(f"{task}/{metric}", {}).setdefault(when, [value, value])
                    lo_hi[0], lo_hi[1] = min(lo_hi[0], value), max(lo_hi[1], value)
    return out


def table(kernels: dict, seeds: dict) -> str:
    """Markdown: per row, min-max of before and after over the kernel settings, then over the seeds."""
    def cell(lo_hi: list[float] | None) -> str:
        if lo_hi is None:
            return "-"
        lo, hi = (f"{v:.4f}" for v in lo_hi)
        return lo if lo == hi else f"{lo} - {hi}"

    lines = ["| row | before, 8 kernel settings | after, 8 kernel settings | after, seeds 0-4 |",
             "|---|---|---|---|"]
    for key, k in kernels.items():
        lines.append(f"| {key} | {cell(k.get('before'))} | {cell(k.get('after'))} | "
                     f"{cell(seeds.get(key, {}).get('after'))} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("/tmp/quickstart-spread"))
    p.add_argument("--only", default=None, help="comma-separated run names (default: all)")
    p.add_argument("--set", nargs="*", default=[], help="overrides for every run, e.g. train.epochs=2")
    args = p.parse_args()
    todo = settings(args.set)
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    runs = {name: run_one(args.root, name, env, over) for name, (env, over) in todo.items()}
    kernel_names = [n for n in runs if n in KERNELS]
    seed_names = [n for n in runs if n == "default" or n.startswith("seed")]
    result = {"kernels": spread(runs, kernel_names), "seeds": spread(runs, seed_names),
              "runs": {n: runs[n]["after"] for n in runs}}
    (args.root / "spread.json").write_text(json.dumps(result, indent=1))
    print(table(result["kernels"], result["seeds"]))


if __name__ == "__main__":
    main()
