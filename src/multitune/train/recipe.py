"""`multitune train`: the whole run, top to bottom.

config -> data -> base model -> adapters -> baseline evaluation -> training loop (with evaluation every
N steps) -> final evaluation -> adapter, metrics, predictions, before/after table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multitune import config as config_mod
from multitune.config.schema import RunConfig
from multitune.data.prepare import Prepared, load_splits, tokenize_splits, training_conversations
from multitune.eval.runner import TaskResult, evaluate
from multitune.io import write_json_atomic, write_text_atomic
from multitune.models import adapters, load
from multitune.report.table import before_after
from multitune.tracking import make_trackers
from multitune.train import loop, optim


@dataclass
class TrainResult:
    metrics: dict[str, Any]  # the contents of eval/metrics.json
    model: Any  # the trained model (peft-wrapped for adapters), unwrapped from any distributed wrapper
    tokenizer: Any


def run(cfg: RunConfig) -> TrainResult:
    """Train, evaluate and save one run as the config says."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision)
    say = accelerator.print  # only the main process prints
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        config_mod.save(cfg, out / "config.yaml")
        (out / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run: rows of an earlier one would mix in

    # Data: rows -> examples -> seeded split; the tiny model (if asked for) is built from the training split.
    splits = load_splits(cfg)
    with accelerator.main_process_first():
        model_name = load.resolve(cfg.model, training_conversations(splits), cfg.seed)
    tokenizer = load.load_tokenizer(model_name, cfg.model)
    prepared = tokenize_splits(tokenizer, splits, cfg)
    pad_id = load.pad_id(tokenizer)
    if accelerator.is_main_process:
        write_json_atomic(out / "data_stats.json", prepared.stats)
    say(_data_summary(prepared))

    # Model and optimiser.
    model = adapters.attach(load.load_model(model_name, cfg.model), cfg.adapter)
    trainable, total = adapters.count_parameters(model)
    say(f"model {cfg.model.name} ({model_name}): {cfg.adapter.method}, {trainable:,} of {total:,} parameters trainable")
    plan = loop.make_plan(cfg.train, prepared, cfg.seed, accelerator.num_processes)
    optimizer = optim.build_optimizer(model, cfg.train)
    scheduler = optim.build_scheduler(optimizer, cfg.train, plan.total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    trackers = make_trackers(cfg, accelerator.is_main_process)
    say(f"training: {plan.total_steps} steps ({plan.steps_per_epoch}/epoch), global batch {plan.global_batch_size}")

    def run_eval(step: int) -> dict[str, TaskResult]:
        results = evaluate(
            accelerator.unwrap_model(model), tokenizer, prepared, cfg.eval.micro_batch_size, cfg.eval.max_rows,
            pad_id, accelerator.process_index, accelerator.num_processes,
        )
        trackers.log(_eval_row(results), step=step)
        return results

    before = run_eval(0) if cfg.eval.baseline else None

    def on_step_end(step: int) -> None:
        every = cfg.eval.every_steps
        if every and step % every == 0 and step < plan.total_steps:
            run_eval(step)

    loop.train_loop(model, optimizer, scheduler, accelerator, prepared, plan, cfg.train, cfg.seed, pad_id,
                    trackers, cfg.logging.every_steps, on_step_end)
    after = run_eval(plan.total_steps)

    summary = {
        "final_step": plan.total_steps,
        "before": None if before is None else {k: r.metrics for k, r in before.items()},
        "after": {k: r.metrics for k, r in after.items()},
    }
    if accelerator.is_main_process:
        adapters.save_final(accelerator.unwrap_model(model), tokenizer, out / "adapter")
        write_eval_outputs(out, summary, after)
        say("\n" + before_after(summary["before"], summary["after"]))
        say(f"\nadapter: {out / 'adapter'}\nmetrics: {out / 'eval' / 'metrics.json'}")
    trackers.finish()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:  # shipping: the model card, and the push when hub.push_at_end asks
        from multitune.export.hub import after_training

        after_training(cfg)
    return TrainResult(summary, accelerator.unwrap_model(model), tokenizer)


def write_eval_outputs(out: Path, summary: dict[str, Any], results: dict[str, TaskResult]) -> None:
    write_json_atomic(out / "eval" / "metrics.json", summary)
    for task, result in results.items():
        if result.predictions:
            lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result.predictions)
            write_text_atomic(out / "eval" / task / "predictions.jsonl", lines)


def _eval_row(results: dict[str, TaskResult]) -> dict[str, float]:
    return {f"eval/{task}/{k}": v for task, r in results.items() for k, v in r.metrics.items() if k != "rows"}


def _data_summary(prepared: Prepared) -> str:
    lines = ["data:"]
    for name, s in prepared.stats.items():
        tr, va = s["train"], s["val"]
        dropped = tr["dropped_too_long"] + va["dropped_too_long"]
        lines.append(
            f"  {name:<14} {s['kind']:<16} rows {s['rows']:>6}  train {tr['examples']:>6}  val {va['examples']:>5}"
            f"  train tokens {tr['tokens']:>8} (answer {tr['answer_tokens']})"
            + (f"  dropped (too long) {dropped}" if dropped else "")
        )
    return "\n".join(lines)
