"""One training lever at a time on the benchmark's multitune side: s/step, real tokens/s, the torch profile.

    python -m bench.peers.levers --layout shared          # the default layout
    python -m bench.peers.levers --layout padded          # train.share_prefix: false
    python -m bench.peers.levers --layout packed --pack-len 448 --micro-batch 1
    python -m bench.peers.levers --compile                # torch.compile (time apart)
    python -m bench.peers.levers --profile 3              # top ops of 3 more steps
    python -m bench.peers.levers --precision autocast-bf16 --profile 3   # bf16 autocast over float32 weights
    python -m bench.peers.levers --precision bfloat16 --profile 3        # bf16 weights and autocast

Run it alone on the machine. It builds what bench/peers/compare.py's multitune side builds (SmolLM2 or the
tiny model, LoRA r 16 on all linear layers, banking77 rows as multitune renders them, constant learning
rate 2e-4, float32) and runs `train.loop.batches_for_step` + `train_step` for `--warmup` untimed steps
(compilation happens there), then `--steps` timed ones, and prints s/step, real tokens/s, the positions a
step computes (padding included), the batch-making time and the last loss. docs/benchmarks.md (issue 15)
has what each lever gave.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import REPO, warm_then_time
from bench.peers.sides import MODELS, Spec, prepare_data, run_config

DATA = REPO.parent / "shared" / "data" / "banking77" / "train.parquet"
# --precision -> (model.dtype, train.mixed_precision), as a run's config would set them
PRECISIONS = {"float32": ("float32", "no"), "autocast-bf16": ("float32", "bf16"), "bfloat16": ("bfloat16", "bf16")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", choices=list(MODELS))
    p.add_argument("--layout", default="shared", choices=["shared", "padded", "packed"])
    p.add_argument("--pack-len", type=int, default=448, help="packed rows' length (--layout packed)")
    p.add_argument("--micro-batch", type=int, default=8, help="rows per step (packed rows with --layout packed)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--compile", action="store_true", help="torch.compile(model, dynamic=True)")
    p.add_argument("--profile", type=int, default=0, help="profile this many more steps and print the top ops")
    p.add_argument("--precision", default="float32", choices=list(PRECISIONS),
                   help="float32; autocast-bf16 (train.mixed_precision: bf16); bfloat16 (and model.dtype: bfloat16)")
    p.add_argument("--data", type=Path, default=DATA)
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> Callable[[int], tuple[Any, float, int]]:
    """The step function of the benchmark's multitune side (its model, optimizer and data inside): step i ->
    (its StepResult, seconds spent making its batches, positions its batches compute)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from bench.peers import sides as peers_sides
    from multitune.models import adapters, attention, load
    from multitune.train import loop, optim

    spec = Spec(model=args.model, data=str(args.data), max_rows=None, max_seq_len=1024, folder="", tokenizer_dir="",
                rows_file="", micro_batch_size=args.micro_batch, steps=args.warmup + args.steps + args.profile,
                warmup_steps=args.warmup, learning_rate=2e-4, lora_r=16, lora_alpha=32.0, pack_len=0,
                packed_micro_batch_size=0, work="/tmp/multitune-bench-levers")
    if args.layout == "packed":  # prepare_data reads the config from run_config: packing on, rows of pack_len
        def packed(s: Spec) -> object:
            cfg = run_config(s)
            return cfg.model_copy(update={"data": cfg.data.model_copy(update={"packing": True,
                                                                              "max_seq_len": args.pack_len})})
        peers_sides.run_config = packed
    cfg, prepared, folder, tokenizer, _ = prepare_data(spec)
    dtype, mixed = PRECISIONS[args.precision]
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"dtype": dtype}),
                                 "train": cfg.train.model_copy(update={"mixed_precision": mixed})})
    accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
    base = load.load_model(folder, cfg.model, None, accelerator.device)
    set_seed(cfg.seed)
    model = adapters.attach(base, cfg.adapter, cfg.train.gradient_checkpointing)
    shared = args.layout == "shared"
    prefix_mask = attention.select_for_shared_prefix(model, cfg.adapter.virtual_tokens) if shared else None
    if args.compile:
        model = torch.compile(model, dynamic=True)
    plan = loop.make_plan(cfg.train, prepared, cfg.seed, 1, share_prefix=shared, prefix_mask=prefix_mask)
    optimizer = optim.build_optimizer(model, cfg.train)
    scheduler = optim.build_scheduler(optimizer, cfg.train, plan.total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    pad = load.pad_id(tokenizer)

    def step(i: int) -> tuple[Any, float, int]:
        started = time.perf_counter()
        batches = loop.batches_for_step(prepared, plan, i, cfg.seed, 0, pad, accelerator.device)
        made = time.perf_counter() - started
        result = loop.train_step(model, optimizer, scheduler, accelerator, batches, cfg.train.max_grad_norm,
                                 len(prepared.task_names), cfg.train.answer_logits_only)
        return result, made, sum(b["input_ids"].numel() for b in batches)

    return step


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    step = build(args)
    timed = warm_then_time(step, repeats=args.steps, warmup=args.warmup)
    print(f"warm-up: {args.warmup} steps in {timed.warmup_seconds:.1f} s (compilation included)")
    tokens = sum(result.tokens for result, _, _ in timed.results)
    positions = sum(laid for _, _, laid in timed.results)
    making = sum(made for _, made, _ in timed.results)
    seconds, last = timed.total, timed.results[-1][0]
    print(f"{args.model} {args.layout} {args.precision}{' compiled' if args.compile else ''}: "
          f"{seconds / args.steps:.3f} s/step, "
          f"{tokens / seconds:,.1f} real tokens/s, {positions / tokens:.3f} positions per real token, "
          f"batch making {1000 * making / args.steps:.1f} ms/step, loss at step {args.warmup + args.steps} "
          f"{last.loss:.4f}; load average {timed.load_before} -> {timed.load_after}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        first = args.warmup + args.steps
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(first, first + args.profile):
                step(i)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
