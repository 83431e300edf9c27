"""multitune against the peer a user would pick, TRL's SFTTrainer + PEFT, on the same step (issue 15).

    python -m bench.peers.compare [--models tiny,smollm2] [--rounds 2] [--steps N]
        [--trl-packing] [--out FILE.json]

Run it alone on the machine: the figures are ratios of timings, and another process on the cores makes
them noise.

Both sides train the same model folder (`model.name: tiny` as multitune builds it, and
SmolLM2-135M-Instruct converted from its GGUF) on the same banking77 rows as multitune renders them
(its config and data layer; TRL gets them as conversational prompt / completion rows, loss on the
completion only) in multitune's order with a sequential sampler, so step i of each side trains on the same
rows. The same LoRA (r 16, alpha 32, dropout 0, all linear layers), micro-batch (16 tiny, 8 SmolLM2),
constant learning rate 2e-4 without warm-up, gradient clipping at 1.0, float32, the same threads
(`--threads`, default: OMP_NUM_THREADS or the cores).

Each round runs multitune, multitune padded, then TRL (then TRL packed with `--trl-packing`), each side in a process of its
own (bench/peers/sides.py); the table gives medians over the rounds of:

- real tokens/s: non-padding tokens over the seconds of the steps after `--warmup`, clocked from one
  step's end to the next (batch making included);
- s/step: the median timed step;
- peak RSS: the side's process's `ru_maxrss` (from `os.wait4`: that process alone, model loading included);
- loss after N steps: the loss of step N's batch, before its update (both sides: the mean over its answer /
  completion tokens); the JSON has every step's loss, and the relative gap between the sides;
- MFU: real tokens/s x model FLOPs per real token (bench/peers/flops.py states the count) over the fp32 and the
  bf16 peak of an n^3 matmul measured at the start with the same threads;
- x TRL: real tokens/s over TRL's padded real tokens/s on the same model; x TRL's best: over the faster
  of TRL's runs (padded, and packed with `--trl-packing`).

multitune runs twice: as it trains by default (`multitune`: shared-prefix rows, data/prefix.py) and with
`train.share_prefix: false` (`multitune-padded`), the same batches padded. Real tokens count every row's
own tokens, its prefix included, on both: the shared prefix is work saved, not tokens dropped.

TRL packed (`--trl-packing`) trains on rows of `--pack-len` tokens (default: about the real tokens of one
padded micro-batch, rounded up to 64), as many per step as hold about the padded micro-batch's real tokens
(at least one), so both modes train about the same tokens per step; they are not the same batches, so its
loss is shown but not compared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import REPO, child_env, default_threads, set_threads
from bench.peers import flops as peers_flops
from bench.peers.sides import MODELS, Spec, render

DATA = REPO.parent / "shared" / "data" / "banking77" / "train.parquet"
MICRO_BATCH = {"tiny": 16, "smollm2": 8}
DEFAULT_STEPS = {"tiny": 20, "smollm2": 12}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny,smollm2", help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--rounds", type=int, default=2, help="rounds of each side in turn (medians over them)")
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps per run (default {DEFAULT_STEPS})")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--trl-packing", action="store_true", help="also TRL's packed mode (packing=True)")
    p.add_argument("--pack-len", type=int, default=0,
                   help="TRL's packed row length (default 0: one padded micro-batch's real tokens, rounded up to 64)")
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--max-rows", type=int, default=None, help="banking77 rows (default: all)")
    p.add_argument("--data", type=Path, default=DATA, help="banking77's train.parquet")
    p.add_argument("--threads", type=int, default=None, help="threads of every process (default: OMP_NUM_THREADS or the cores)")
    p.add_argument("--matmul-n", type=int, default=2048, help="the peak's matmul size")
    p.add_argument("--work", type=Path, default=Path("/tmp/multitune-bench-peers"), help="scratch folder")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}: choose from {list(MODELS)}")
    if args.steps is not None and args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup}) to time anything")
    if args.threads is None:
        args.threads = default_threads()
    return args


def side_env(threads: int) -> dict[str, str]:
    """The same environment for every side: its threads, idle OpenMP threads asleep (as `multitune` sets
    them), no GPU (a CPU comparison: on a GPU TRL would switch to bf16 and multitune would not), offline,
    and this tree's src/ first (`bench` itself imports from the repository root, the children's cwd)."""
    return child_env(threads, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                     TOKENIZERS_PARALLELISM="false")


def run_side(side: str, spec: Spec, threads: int, tag: str) -> dict[str, Any]:
    """Run one side in its own process; its result with `peak_rss_mib`, that process's ru_maxrss."""
    work = Path(spec.work)
    spec_file, result_file, log = work / f"{tag}.spec.json", work / f"{tag}.result.json", work / f"{tag}.log"
    spec_file.write_text(json.dumps(asdict(spec)))
    result_file.unlink(missing_ok=True)
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bench.peers.sides", side, str(spec_file),
                                 str(result_file)], cwd=REPO, env=side_env(threads), stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # that child's own resource usage, not all children's
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not result_file.is_file():
        raise RuntimeError(f"{side} on {spec.model} failed (exit {proc.returncode}); the end of {log}:\n"
                           + log.read_text()[-4000:])
    result = json.loads(result_file.read_text())
    return {**result, "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "process_s": round(time.perf_counter() - started, 1)}


def measure_model(name: str, args: argparse.Namespace, peaks: dict[str, Any]) -> dict[str, Any]:
    """Render `name`'s data once, then `args.rounds` rounds of each side in turn; medians and MFU."""
    steps = args.steps or DEFAULT_STEPS[name]
    spec = Spec(model=name, data=str(args.data), max_rows=args.max_rows, max_seq_len=args.max_seq_len, folder="",
                tokenizer_dir="", rows_file="", micro_batch_size=MICRO_BATCH[name], steps=steps,
                warmup_steps=args.warmup, learning_rate=2e-4, lora_r=16, lora_alpha=32.0, pack_len=args.pack_len,
                packed_micro_batch_size=0, work=str(args.work / name))
    spec, info = render(spec)
    shape = peers_flops.ModelShape.from_config(info["config"])
    flops = peers_flops.flops_per_real_token(shape, spec.lora_r, info["timed_sequences"])
    sides = ["multitune", "multitune-padded", "trl"] + (["trl-packed"] if args.trl_packing else [])
    rounds: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    for r in range(args.rounds):
        for side in sides:
            print(f"[{name}] round {r + 1}/{args.rounds}: {side} ({steps} steps)...", file=sys.stderr, flush=True)
            rounds[side].append(run_side(side, spec, args.threads, f"{side}-{r}"))
    out = {"folder": spec.folder, "shape": asdict(shape), "steps": steps, "warmup_steps": args.warmup,
           "micro_batch_size": spec.micro_batch_size, "pack_len": spec.pack_len,
           "packed_micro_batch_size": spec.packed_micro_batch_size, "train_examples": info["train_examples"],
           "mean_tokens": info["mean_tokens"], "flops_per_real_token": {k: round(v) for k, v in flops.items()},
           "sides": {s: {"median": medians(rs, steps), "rounds": rs} for s, rs in rounds.items()}}
    add_ratios(out, flops["total"], peaks)
    return out


def medians(rounds: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Medians over rounds of tokens/s, s/step, peak RSS and the loss after `steps` steps."""
    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    return {"tokens_per_s": med("tokens_per_s"), "step_s": med("step_s"), "peak_rss_mib": med("peak_rss_mib"),
            "real_tokens_per_step": med("real_tokens_per_step"),
            "loss_after_steps": statistics.median(r["losses"][steps - 1] for r in rounds)}


def add_ratios(out: dict[str, Any], flops_per_token: float, peaks: dict[str, Any]) -> None:
    """MFU against each peak and tokens/s over TRL's padded, per side; the loss gap multitune / TRL."""
    sides = out["sides"]
    trl = sides["trl"]["median"]
    trl_best = max(s["median"]["tokens_per_s"] for name, s in sides.items() if name.startswith("trl"))
    for s in sides.values():
        m = s["median"]
        for dtype, peak in peaks.items():
            m[f"mfu_{dtype}"] = round(peers_flops.mfu(m["tokens_per_s"], flops_per_token, peak["flops_per_s"]), 4)
        m["over_trl"] = round(m["tokens_per_s"] / trl["tokens_per_s"], 3)
        m["over_trl_best"] = round(m["tokens_per_s"] / trl_best, 3)
    ours = sides["multitune"]["median"]["loss_after_steps"]
    out["loss_gap_multitune_over_trl"] = round(ours / trl["loss_after_steps"] - 1, 4)
    # TRL's completion can hold tokens multitune does not train (ChatML's newline after <|im_end|>), which
    # lower its mean: its loss re-averaged over multitune's loss tokens, those extra tokens taken as ~0 loss.
    steps = out["steps"]
    mine = sides["multitune"]["rounds"][0]["loss_tokens"][steps - 1]
    theirs = sides["trl"]["rounds"][0]["loss_tokens"][steps - 1]
    out["loss_tokens_at_step_n"] = {"multitune": mine, "trl": theirs}
    trl["loss_per_multitune_loss_token"] = round(trl["loss_after_steps"] * theirs / mine, 5)
    out["loss_gap_same_tokens"] = round(ours / trl["loss_per_multitune_loss_token"] - 1, 4)


COLUMNS = ["model", "side", "real tokens/s", "s/step", "peak RSS MiB", "loss after N steps", "MFU fp32",
           "MFU bf16", "x TRL", "x TRL's best"]


def table(report: dict[str, Any]) -> str:
    """The side-by-side Markdown table, medians over the rounds."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, model in report["models"].items():
        for side, s in model["sides"].items():
            m = s["median"]
            loss = f"{m['loss_after_steps']:.4f}"
            if "loss_per_multitune_loss_token" in m and m["loss_per_multitune_loss_token"] != m["loss_after_steps"]:
                loss += f" ({m['loss_per_multitune_loss_token']:.4f} over multitune's loss tokens)"
            lines.append(f"| {name} | {side} | {m['tokens_per_s']:,.1f} | {m['step_s']:.3f} | {m['peak_rss_mib']:,.0f} | "
                         f"{loss} | {m['mfu_float32']:.2%} | "
                         f"{m['mfu_bfloat16']:.2%} | {m['over_trl']:.2f}x | {m['over_trl_best']:.2f}x |")
    return "\n".join(lines)


def notes(report: dict[str, Any]) -> str:
    """What the table rests on: the peaks, the FLOP count per model, the loss gaps."""
    peaks = report["peaks"]
    out = [f"peak {k}: {p['gflops_per_s']} GFLOP/s ({p['how']})" for k, p in peaks.items()] + [
        f"FLOPs: {peers_flops.FORMULA}"]
    for name, m in report["models"].items():
        for side, s in m["sides"].items():
            share = s["rounds"][0].get("positions_per_real_token")
            if share is not None:
                out.append(f"{name} {side}: {share:.3f} positions computed per real token (padding adds, a shared "
                           f"prefix removes); hardware FLOPs utilisation about MFU x {share:.3f}")
        f = m["flops_per_real_token"]
        out.append(f"{name}: {m['train_examples']} training rows, {m['mean_tokens']} tokens each on average; "
                   f"{f['total'] / 1e6:.2f} MFLOP per real token (base {f['base'] / 1e6:.2f}, LoRA "
                   f"{f['lora'] / 1e6:.3f}, head {f['head'] / 1e6:.2f}, attention {f['attention'] / 1e6:.3f}); "
                   f"{m['steps']} steps of {m['micro_batch_size']} ({m['warmup_steps']} untimed); loss gap "
                   f"multitune / TRL - 1 = {m['loss_gap_multitune_over_trl']:+.2%} as each reports it, "
                   f"{m['loss_gap_same_tokens']:+.2%} over the same loss tokens (step {m['steps']}: multitune "
                   f"{m['loss_tokens_at_step_n']['multitune']}, TRL {m['loss_tokens_at_step_n']['trl']})")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    set_threads(args.threads)  # the peak at the threads every side runs with
    peaks = {dtype: peers_flops.matmul_peak(args.matmul_n, dtype) for dtype in ("float32", "bfloat16")}
    report: dict[str, Any] = {
        "command": " ".join(sys.argv), "threads": args.threads, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "versions": _versions(), "flop_formula": peers_flops.FORMULA,
        "peaks": peaks,
        "models": {name: measure_model(name, args, peaks) for name in args.models},
    }
    print(table(report) + "\n\n" + notes(report))
    for name, m in report["models"].items():
        if not all(math.isfinite(s["median"]["loss_after_steps"]) for s in m["sides"].values()):
            print(f"warning: {name}: a side's loss is not finite", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return report


def _versions() -> dict[str, str]:
    import importlib.metadata

    return {name: importlib.metadata.version(name) for name in ("torch", "transformers", "peft", "trl", "accelerate")}


if __name__ == "__main__":
    main()
