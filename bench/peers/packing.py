"""Padding share and real training tokens per second, without and with packing.

    python -m bench.peers.packing            # banking77 + commonsense_qa from ../shared/data

Data: banking77 (train.parquet) and commonsense_qa (train.jsonl) from ../shared/data, tokenised for the
tiny model (`model.name: tiny`, default size: 4 layers, width 256, byte-level BPE of 2048 built from these
tasks' texts). Both layouts fully fine-tune the same model from the same weights with the real loop
(`train.loop.train_step`: token-normalised loss, per-task sums, AdamW), one micro-batch per step:

- padded: `micro_batch_size` examples per micro-batch, right-padded to the longest;
- packed: `packed_micro_batch_size` rows of up to `max_seq_len` tokens, best-fit decreasing. The default
  6 x 256 holds about as many real tokens as 16 padded examples, so both layouts pay the same per-step
  costs (optimizer, clipping) per real token.

Padding share is exact, over every micro-batch of one epoch (no model run). Tokens per second count real
(non-padding) tokens over `steps` timed optimizer steps after `warmup` untimed ones; the two layouts take
turns step by step, so a change in the machine's load weighs on both alike. Prints a Markdown table and
one JSON line.

Why rows of 256 and not longer: attention costs grow with the square of the row length, and at width 256
attention is a large part of the tiny model's work: measured here, a forward and backward over rows of
256 cost about 20% more per token than over the ~100-token padded batches, and longer rows cost more
still. At Llama scale (width 4096) attention is a small share and rows of 2048 are cheap.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import torch

from bench.common import REPO

SHARED_DATA = REPO.parent / "shared" / "data"


def main() -> None:
    args = _args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.manual_seed(0)
    cfg = _config(args)
    prepared, model_name = _prepare(cfg)
    layouts = {
        "padded": (prepared, args.micro_batch_size),
        "packed": (dataclasses.replace(prepared, pack_len=args.max_seq_len), args.packed_micro_batch_size),
    }
    train_cfgs = {name: cfg.train.model_copy(update={"micro_batch_size": micro}) for name, (_, micro) in layouts.items()}
    results = {name: {"padding_share": padding_share(data, train_cfgs[name], cfg.seed)}
               for name, (data, _) in layouts.items()}
    timed = throughput({name: data for name, (data, _) in layouts.items()}, train_cfgs, cfg, model_name,
                       args.steps, args.warmup)
    for name in layouts:
        results[name].update(timed[name])
    _report(args, prepared, results)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared data folder")
    p.add_argument("--max-rows", type=int, default=None, help="rows per task (default: all)")
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--micro-batch-size", type=int, default=16, help="examples per micro-batch, padded")
    p.add_argument("--packed-micro-batch-size", type=int, default=6,
                   help="packed rows per micro-batch (6 x 256 holds about the real tokens of 16 padded examples)")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per layout")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    return p.parse_args()


def _config(args: argparse.Namespace):
    from multitune.config import validate

    if not args.data.is_dir():
        raise SystemExit(f"no shared data at {args.data}: pass --data")
    cap = {} if args.max_rows is None else {"max_rows": args.max_rows}
    return validate({
        "output_dir": "/tmp/multitune-bench-packing",
        "model": {"name": "tiny"},
        "adapter": {"method": "full"},
        "tasks": [
            {"name": "banking77", "kind": "classification", "source": str(args.data / "banking77" / "train.parquet"), **cap},
            {"name": "commonsense_qa", "kind": "multiple_choice",
             "source": str(args.data / "commonsense_qa" / "train.jsonl"), **cap},
        ],
        "data": {"max_seq_len": args.max_seq_len},
        "train": {"epochs": 1, "grad_accum_steps": 1, "learning_rate": 1e-3},
    })


def _prepare(cfg):
    from multitune.data.prepare import load_splits, tokenize_splits, training_conversations
    from multitune.models import load

    splits = load_splits(cfg)
    model_name = load.resolve(cfg.model, training_conversations(splits), cfg.seed)
    return tokenize_splits(load.load_tokenizer(model_name, cfg.model), splits, cfg), model_name


def padding_share(prepared, train_cfg, seed: int) -> float:
    """Padding tokens / all tokens over every micro-batch of epoch 0 (exact, no model)."""
    from multitune.data.collate import real_tokens
    from multitune.train import loop

    plan = loop.make_plan(train_cfg, prepared, seed, world_size=1)
    real = total = 0
    for step in range(plan.steps_per_epoch):
        for batch in loop.batches_for_step(prepared, plan, step, seed, 0, 0, "cpu"):
            real += int(real_tokens(batch))
            total += batch["input_ids"].numel()
    return 1 - real / total


def throughput(data: dict, train_cfgs: dict, cfg, model_name: str, steps: int, warmup: int) -> dict[str, dict]:
    """Real tokens per second of each layout over `steps` optimizer steps of the real loop, after `warmup`.

    The layouts take turns step by step (each with its own copy of the model and optimizer), so a change
    in the machine's load during the run weighs on both alike.
    """
    from accelerate import Accelerator

    from multitune.models import adapters, load
    from multitune.train import loop, optim

    accelerator = Accelerator(cpu=True)
    runs = {}
    for name, prepared in data.items():
        torch.manual_seed(0)
        model = adapters.attach(load.load_model(model_name, cfg.model), cfg.adapter)
        plan = loop.make_plan(train_cfgs[name], prepared, cfg.seed, 1)
        optimizer = optim.build_optimizer(model, train_cfgs[name])
        scheduler = optim.build_scheduler(optimizer, train_cfgs[name], plan.total_steps)
        model, optimizer = accelerator.prepare(model, optimizer)
        model.train()
        runs[name] = (prepared, plan, model, optimizer, scheduler)
    out = {name: {"real_tokens_timed": 0, "seconds_timed": 0.0, "steps_per_epoch": r[1].steps_per_epoch}
           for name, r in runs.items()}
    for step in range(warmup + steps):
        for name, (prepared, plan, model, optimizer, scheduler) in runs.items():
            batches = loop.batches_for_step(prepared, plan, step, cfg.seed, 0, 0, accelerator.device)
            start = time.perf_counter()
            result = loop.train_step(model, optimizer, scheduler, accelerator, batches, cfg.train.max_grad_norm,
                                     len(prepared.splits))
            if step >= warmup:
                out[name]["seconds_timed"] += time.perf_counter() - start
                out[name]["real_tokens_timed"] += result.tokens
    for r in out.values():
        r["real_tokens_per_s"] = r["real_tokens_timed"] / r["seconds_timed"]
    return out


def _report(args: argparse.Namespace, prepared, results: dict[str, dict[str, float]]) -> None:
    examples = sum(prepared.task_sizes)
    print(f"\n{examples} training examples (banking77 {prepared.task_sizes[0]}, commonsense_qa "
          f"{prepared.task_sizes[1]}), max_seq_len {args.max_seq_len}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n")
    print("| layout | micro-batch | steps/epoch | padding share | real tokens/s |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        micro = f"{args.micro_batch_size} examples" if name == "padded" else \
            f"{args.packed_micro_batch_size} rows x {args.max_seq_len}"
        print(f"| {name} | {micro} | {r['steps_per_epoch']} | {r['padding_share']:.1%} | {r['real_tokens_per_s']:,.0f} |")
    speedup = results["packed"]["real_tokens_per_s"] / results["padded"]["real_tokens_per_s"]
    print(f"\npacked / padded real tokens per second: {speedup:.2f}x")
    print(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}))


if __name__ == "__main__":
    main()
