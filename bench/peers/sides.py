"""The two sides of bench/peers/compare.py and the data they share.

`render` (in the benchmark's own process) runs multitune's config and data layer once per model: the
banking77 rows rendered and tokenised as multitune trains them, the model folder, multitune's step order.
It writes what the peer needs: TRL rows (conversational prompt / completion, in multitune's order, so that
with a sequential sampler both sides train on the same batches) and the tokenizer multitune uses (its chat
template as multitune applies it).

Each side then runs in a process of its own, started by the benchmark (`python -m bench.peers.sides SIDE
SPEC RESULT`), so each one's peak resident memory is its own:

- `multitune` / `multitune-padded`: the real training code (with its default shared-prefix rows, or
  padded rows as before them), step by step: `train.loop.make_plan`, `batches_for_step` (the
  project's own collation) and `train_step`, on the model built as the `train` recipe builds it
  (`models.load.load_model`, `models.adapters.attach`, `train.optim`, accelerate's `prepare`);
- `trl` / `trl-packed`: `peers.trl_lora_steps` (TRL's SFTTrainer + PEFT), loading nothing of multitune.

Both clocks run from one step's end to the next (batch making included) and count real (non-pad) tokens.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SEED = 0
MODELS = {"tiny": "tiny", "smollm2": "smollm2-135m-instruct"}  # --models name -> model.name


@dataclass(frozen=True)
class Spec:
    """One side's run, as the benchmark hands it to the side's process (a JSON file)."""

    model: str  # a key of MODELS
    data: str  # banking77's train.parquet
    max_rows: int | None
    max_seq_len: int
    folder: str  # the model folder both sides load
    tokenizer_dir: str  # multitune's tokenizer, saved (TRL's side)
    rows_file: str  # TRL's rows (JSON), multitune's order
    micro_batch_size: int
    steps: int
    warmup_steps: int
    learning_rate: float
    lora_r: int
    lora_alpha: float
    pack_len: int  # TRL's packed rows; 0: sized by `render` to hold one padded micro-batch's real tokens
    packed_micro_batch_size: int  # 0 until `render` sizes it from the data
    work: str  # scratch folder (TRL's output_dir)


def run_config(spec: Spec) -> Any:
    """The multitune RunConfig both sides' data come from: banking77 only, LoRA r/alpha of the spec on all
    linear layers without dropout, constant learning rate without warm-up, no evaluation."""
    from multitune.config import validate

    task = {"name": "banking77", "kind": "classification", "source": spec.data}
    if spec.max_rows is not None:
        task["max_rows"] = spec.max_rows
    return validate({
        "output_dir": str(Path(spec.work) / "multitune"), "seed": SEED,
        "model": {"name": MODELS[spec.model]},
        "adapter": {"method": "lora", "r": spec.lora_r, "alpha": spec.lora_alpha, "dropout": 0.0,
                    "target_modules": "all-linear"},
        "tasks": [task], "data": {"max_seq_len": spec.max_seq_len},
        "train": {"max_steps": spec.steps, "micro_batch_size": spec.micro_batch_size, "grad_accum_steps": 1,
                  "learning_rate": spec.learning_rate, "lr_scheduler": "constant", "warmup_ratio": 0.0,
                  "max_grad_norm": 1.0, "weight_decay": 0.0, "mixed_precision": "no"},
        "eval": {"baseline": False},
    })


def prepare_data(spec: Spec) -> tuple[Any, Any, str, Any, list[Any]]:
    """multitune's data layer: (config, prepared data, model folder, tokenizer, training examples)."""
    from multitune.data.prepare import load_splits, tokenize_splits, training_conversations
    from multitune.models import load

    cfg = run_config(spec)
    splits = load_splits(cfg)
    folder = load.resolve(cfg.model, training_conversations(splits), cfg.seed)  # builds/converts once
    tokenizer = load.load_tokenizer(folder, cfg.model)
    prepared = tokenize_splits(tokenizer, splits, cfg)
    return cfg, prepared, folder, tokenizer, [ex for s in splits for ex in s.train]


def packed_micro_batch(micro: int, mean_tokens: float, pack_len: int) -> int:
    """Packed rows per step holding about the real tokens of `micro` padded examples, at least one.

    >>> packed_micro_batch(16, 45.0, 1024), packed_micro_batch(64, 50.0, 1024)
    (1, 3)
    """
    return max(1, round(micro * mean_tokens / pack_len))


def render(spec: Spec) -> tuple[Spec, dict[str, Any]]:
    """Prepare `spec.model`'s data, write the peer's rows and tokenizer; returns the completed spec and
    what the FLOP count needs: the model's config.json and the (real, answer) tokens of each timed row."""
    from multitune.data.mixture import cached_mixture_order

    cfg, prepared, folder, tokenizer, examples = prepare_data(spec)
    if len(examples) != len(prepared.train):  # a dropped example would shift every index below
        raise SystemExit(f"{len(examples) - len(prepared.train)} examples dropped by tokenising: raise --max-seq-len")
    order = cached_mixture_order(tuple(prepared.task_sizes), tuple(prepared.epoch_counts), cfg.seed, 0)
    needed = spec.steps * spec.micro_batch_size
    if needed > len(order):
        raise SystemExit(f"{spec.steps} steps of {spec.micro_batch_size} need {needed} rows; banking77 has {len(order)}")
    lengths = [len(prepared.train[i].input_ids) for i in order]
    mean = statistics.mean(lengths)
    pack_len = spec.pack_len or 64 * math.ceil(spec.micro_batch_size * mean / 64)
    packed_micro = packed_micro_batch(spec.micro_batch_size, mean, pack_len)
    # TRL's packed rows come from the same order; enough rows to fill its steps, with a margin for
    # best-fit packing leaving space.
    packed_tokens = 1.25 * spec.steps * packed_micro * pack_len
    take = needed
    while take < len(order) and sum(lengths[:take]) < packed_tokens:
        take += spec.micro_batch_size
    rows = [{"prompt": [dict(m) for m in examples[i].prompt], "completion": [dict(examples[i].messages[-1])]}
            for i in order[:take]]
    work = Path(spec.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "trl_rows.json").write_text(json.dumps(rows))
    tokenizer.save_pretrained(work / "tokenizer")
    timed = order[spec.warmup_steps * spec.micro_batch_size:needed]
    info = {"config": json.loads((Path(folder) / "config.json").read_text()),
            "timed_sequences": [(len(prepared.train[i].input_ids), prepared.train[i].n_answer_tokens) for i in timed],
            "train_examples": len(order), "mean_tokens": round(statistics.mean(lengths), 1)}
    done = Spec(**{**asdict(spec), "folder": folder, "tokenizer_dir": str(work / "tokenizer"),
                   "rows_file": str(work / "trl_rows.json"), "pack_len": pack_len,
                   "packed_micro_batch_size": packed_micro})
    return done, info


def multitune_side(spec: Spec, share_prefix: bool = True) -> dict[str, Any]:
    """multitune's real loop for `spec.steps` steps; tokens/s over the steps after the warm-up. Its
    default (`train.share_prefix` on: data/prefix.py), or padded micro-batches with `share_prefix` False."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from multitune.models import adapters, attention, load
    from multitune.train import loop, optim

    started = time.perf_counter()
    cfg, prepared, folder, tokenizer, _ = prepare_data(spec)
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=not torch.cuda.is_available())
    base = load.load_model(folder, cfg.model, None, accelerator.device)
    set_seed(cfg.seed)
    model = adapters.attach(base, cfg.adapter, cfg.train.gradient_checkpointing)
    shared = share_prefix and cfg.shares_prefix
    prefix_mask = attention.select_for_shared_prefix(model, cfg.adapter.virtual_tokens) if shared else None
    plan = loop.make_plan(cfg.train, prepared, cfg.seed, 1, share_prefix=shared, prefix_mask=prefix_mask)
    optimizer = optim.build_optimizer(model, cfg.train)
    scheduler = optim.build_scheduler(optimizer, cfg.train, plan.total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    pad, n_tasks = load.pad_id(tokenizer), len(prepared.task_names)
    setup_s = time.perf_counter() - started
    losses, seconds, tokens, loss_tokens, positions = [], [], [], [], []
    stamp = time.perf_counter()
    for step in range(plan.total_steps):  # as recipes/train.py runs them, without its logging, evaluation and checkpoints
        batches = loop.batches_for_step(prepared, plan, step, cfg.seed, 0, pad, accelerator.device)
        result = loop.train_step(model, optimizer, scheduler, accelerator, batches, cfg.train.max_grad_norm,
                                 n_tasks, cfg.train.answer_logits_only)
        now = time.perf_counter()
        seconds.append(now - stamp)
        stamp = now
        losses.append(result.loss)
        tokens.append(result.tokens)
        loss_tokens.append(result.answer_tokens)
        positions.append(sum(b["input_ids"].numel() for b in batches))
    trainable, _ = adapters.count_parameters(model)
    timed = slice(spec.warmup_steps, None)
    return summarise(losses, seconds, tokens, spec.warmup_steps, loss_tokens=loss_tokens, trainable_params=trainable,
                     positions_per_real_token=round(sum(positions[timed]) / sum(tokens[timed]), 4),
                     setup_s=round(setup_s, 2))


def summarise(losses: list[float], seconds: list[float], tokens: list[int], warmup: int, **extra: Any) -> dict[str, Any]:
    """tokens/s over the steps after `warmup` (their real tokens over their seconds), the median step."""
    timed = slice(warmup, None)
    return {"tokens_per_s": round(sum(tokens[timed]) / sum(seconds[timed]), 1),
            "real_tokens_per_step": round(statistics.mean(tokens[timed]), 1),
            "step_s": round(statistics.median(seconds[timed]), 4), "first_step_s": round(seconds[0], 3),
            "losses": [round(float(x), 5) for x in losses], **extra}


def trl_side(spec: Spec, packing: bool) -> dict[str, Any]:
    """TRL's SFTTrainer + PEFT (peers.trl_lora_steps) on the same folder, rows and settings: padded
    batches of `micro_batch_size` rows in multitune's order, or packed rows of `pack_len`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.peers import trl_side as peers

    rows = json.loads(Path(spec.rows_file).read_text())
    if not packing:
        rows = rows[:spec.steps * spec.micro_batch_size]
    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer_dir)
    # Loaded as multitune loads it on a CPU (float32, sdpa attention), so both train the same model.
    model = AutoModelForCausalLM.from_pretrained(spec.folder, dtype=torch.float32, attn_implementation="sdpa")
    result = peers.trl_lora_steps(
        model, tokenizer, rows, peers.LoraSettings(r=spec.lora_r, alpha=spec.lora_alpha, dropout=0.0),
        micro_batch_size=spec.packed_micro_batch_size if packing else spec.micro_batch_size,
        learning_rate=spec.learning_rate, steps=spec.steps, warmup_steps=spec.warmup_steps,
        max_length=spec.pack_len if packing else spec.max_seq_len, packing=packing,
        output_dir=str(Path(spec.work) / ("trl-packed" if packing else "trl")), seed=SEED, sampling="sequential")
    return {k: v for k, v in result.items() if k != "peak_memory_gib"}


def main(argv: list[str]) -> None:
    """`python -m bench.peers.sides SIDE SPEC RESULT`: run one side, write its result (JSON) with its own peak RSS."""
    import resource

    side, spec_file, result_file = argv
    spec = Spec(**json.loads(Path(spec_file).read_text()))
    if side in ("multitune", "multitune-padded"):
        result = multitune_side(spec, share_prefix=side == "multitune")
    elif side in ("trl", "trl-packed"):
        result = trl_side(spec, packing=side == "trl-packed")
    else:
        raise SystemExit(f"unknown side {side!r}")
    result["self_maxrss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    Path(result_file).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
