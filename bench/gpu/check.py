"""One GPU check of every training path and of evaluation, on a Llama-3-8B-shaped model with random weights,
with the defaults a user gets on the device (issues 11 and 22).

    bench/gpu/check.sh                                  # on the GPU machine: wheels, then this, into $OUT
    python -m bench.gpu.check --out runs/gpu-check      # on any CUDA machine with the packages installed
    python -m bench.gpu.check --cpu-smoke --out DIR     # every path at a toy size on a CPU (the test suite)

Writes DIR/gpu_check.json (after every section, so a run cut short keeps what it measured) and
DIR/gpu_check.md (the tables). Sections, in the order they run (a failing one is recorded with its error
and the others still run; the exit status is 1 if any failed):

- environment: `multitune doctor`'s report, versions, the GPU, a measured bf16 matmul peak and the datasheet's;
- data: banking77 + commonsense_qa rendered through the chat template by multitune's data layer (bench/gpu/data.py);
- defaults: what the shipped `auto` / `null` settings resolve to on this device for each method
  (config/device.py: precision, weight dtype, batch layout, TF32, the adapters' input cast);
- lora: multitune's own train_step with those defaults (bench/gpu/steps.py), on packed rows of 2,048 tokens and
  in the device's default layout (padded micro-batches on a GPU): tokens/s, peak memory, MFU against both
  peaks, FLOPs per step (bench/gpu/shapes.py says how they are counted);
- share_prefix: shared-prefix rows against padded rows on the same examples (LoRA, all layers): tokens/s,
  peak memory, the first losses, and whether the layout should be the GPU default;
- eval: multitune's evaluation (scoring over banking77's 77 labels, commonsense_qa's letters, greedy
  generation) on the same model, rows/s, forward calls, peak memory (bench/gpu/eval.py);
- qlora (NF4, double quantisation, bf16 compute), dora, full (32 layers, else 16, else 8: float32 master
  weights), lora_checkpointing: as lora;
- trl: the same LoRA step through TRL's SFTTrainer + PEFT (bench/peers/trl_side.py), and multitune's ratio to it;
- logits: answer-only logits against the plain loss at the 128k vocabulary (Liger when installed);
- launch_single (CPU only), launch_fsdp, launch_fsdp_qlora: `multitune train` under `accelerate launch` with
  the shipped topologies at one process: steps, checkpoint, resume with the same loss, full adapter
  (the launched runs start early and run beside the timed sections where that times nothing: the
  single-process one on a CPU from the start, the FSDP + QLoRA one beside the FSDP one);
- compile: `train.compile: true` (inductor) against eager on the LoRA step, compile time apart.

Every timed section writes its config as a user would (bench/gpu/steps.py) and resolves it for the device
as `multitune train` does; what it set and what it got are in its `overrides` and `settings`.

A GPU-only part says "skipped: no CUDA" on a CPU; a part the time budget (`--budget-s`) cannot fit says so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import REPO

# Rough seconds each section takes on an H100/H200 at the 8B shape (guesses until a GPU has run it): a
# section starts only if it fits in what is left of --budget-s. launch_single skips itself on a GPU.
GPU_COST_S = {"environment": 10, "data": 15, "defaults": 2, "lora": 20, "share_prefix": 35, "eval": 60,
              "qlora": 80, "dora": 30, "full": 40, "lora_checkpointing": 20, "trl": 45, "logits": 25,
              "launch_single": 0, "launch_fsdp": 80, "launch_fsdp_qlora": 30, "compile": 90}
# What users get first (the defaults, their layout question, evaluation), then the other methods and the
# peer; the launched runs after them (the two FSDP ones side by side, timing nothing), and compile last,
# the one whose cost is least known. What the budget leaves out goes to a second call (--only).
SECTIONS = ["environment", "data", "defaults", "lora", "share_prefix", "eval", "qlora", "dora", "full",
            "lora_checkpointing", "trl", "logits", "launch_single", "launch_fsdp", "launch_fsdp_qlora", "compile"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Offline by construction, set before datasets / huggingface_hub are imported (they read these then).
    for key, value in [("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                       ("WANDB_MODE", "disabled"), ("MULTITUNE_CACHE", str(Path(args.work) / "cache"))]:
        os.environ.setdefault(key, value)
    # after the environment above: it imports datasets through multitune
    from bench.gpu import sections as gpu_sections

    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": " ".join(["python", "-m", "bench.gpu.check", *(argv if argv is not None else sys.argv[1:])]),
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu", "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "budget_s": args.budget_s, "sections": {},
    }
    wanted = [s for s in SECTIONS if (not args.only or s in args.only) and s not in args.skip]
    check = gpu_sections.Check(cpu_smoke=args.cpu_smoke, data_dir=Path(args.data), work=work, wanted=wanted)
    started = time.perf_counter()
    for name in wanted:
        # A section already running in the background is always collected, whatever time is left.
        left = args.budget_s - (time.perf_counter() - started) if args.budget_s and not check.in_background(name) else None
        report["sections"][name] = run_section(name, getattr(check, name), left, args.cpu_smoke)
        check.after(name)
        report["wall_s"] = round(time.perf_counter() - started, 1)
        write(out, report)
        print(f"[{report['wall_s']:7.1f} s] {name}: {summary(report['sections'][name])}", flush=True)
    gpu_sections.add_ratios(report)
    write(out, report)
    print((out / "gpu_check.md").read_text())
    failed = [k for k, v in report["sections"].items() if isinstance(v, dict) and "error" in v]
    if failed:
        print(f"failed sections: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def run_section(name: str, fn: Callable[[], dict[str, Any]], left_s: float | None, cpu_smoke: bool) -> dict[str, Any]:
    """Run one section; its error (with the traceback's end) becomes its result instead of stopping the check."""
    if left_s is not None and not cpu_smoke and left_s < GPU_COST_S[name]:
        return {"status": f"skipped: time budget ({left_s:.0f} s left, about {GPU_COST_S[name]} s needed)"}
    begun = time.perf_counter()
    try:
        result = fn()
    except Exception as e:  # one broken path must not hide what the others measure
        tail = traceback.format_exc().splitlines()[-25:]
        result = {"error": f"{type(e).__name__}: {str(e)[:2000]}", "traceback": tail}
        print("\n".join(tail), file=sys.stderr, flush=True)
    result["section_s"] = round(time.perf_counter() - begun, 1)
    return result


def summary(result: dict[str, Any]) -> str:
    if "error" in result:
        return "ERROR " + result["error"].splitlines()[0][:200]
    if "status" in result:
        return result["status"]
    return f"done in {result.get('section_s')} s"


def write(out: Path, report: dict[str, Any]) -> None:
    from bench.gpu import report as gpu_report

    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(gpu_report.markdown(report))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="every path at a toy size (no GPU needed)")
    p.add_argument("--out", default=str(REPO / "runs" / "gpu-check"), help="where the JSON and markdown go")
    p.add_argument("--work", default=None, help="model folders, launched runs, caches (default: OUT/work)")
    p.add_argument("--data", default=None, help="folder with banking77 and commonsense_qa "
                   "(default: ../shared/data, else .whl/data as bench/gpu/wheels.sh fills it)")
    p.add_argument("--budget-s", type=float, default=None, help="skip sections that would not fit in this many seconds")
    p.add_argument("--only", type=lambda s: s.split(","), default=[], help=f"comma-separated, of: {','.join(SECTIONS)}")
    p.add_argument("--skip", type=lambda s: s.split(","), default=[], help="comma-separated sections to leave out")
    args = p.parse_args(argv)
    unknown = [s for s in args.only + args.skip if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; the sections are {', '.join(SECTIONS)}")
    args.work = args.work or str(Path(args.out) / "work")
    if args.data is None:
        shared = REPO.parent / "shared" / "data"
        args.data = str(shared if shared.is_dir() else REPO / ".whl" / "data")
    return args


if __name__ == "__main__":
    sys.exit(main())
