"""`multitune train`: the whole run, top to bottom.

config -> data -> base model -> adapters -> baseline evaluation -> training loop (with evaluation every
N steps) -> final evaluation -> adapter, metrics, predictions, before/after table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multitune import config as config_mod
from multitune.config.schema import RunConfig
from multitune.data.prepare import Prepared, load_splits, tokenize_splits, training_conversations
from multitune.eval.best import primary_metrics, update_best
from multitune.eval.runner import TaskResult, build_eval_sets, evaluate
from multitune.io import write_json_atomic
from multitune.models import adapters, load
from multitune.report.build import write_report
from multitune.report.results import Summary, write_results
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

    # Evaluation (issue 4): validation rows tokenised once; generation metrics where eval.generate says;
    # the best evaluation by eval.best_metric is tracked (the baseline is not a candidate).
    eval_sets = build_eval_sets(tokenizer, splits, cfg.data.max_seq_len, cfg.data.truncation)
    primary = primary_metrics([(t.name, t.kind) for t in cfg.tasks])
    best: dict[str, Any] | None = None

    def run_eval(step: int, generate: bool, baseline: bool = False) -> dict[str, TaskResult]:
        nonlocal best
        results = evaluate(
            accelerator.unwrap_model(model), tokenizer, eval_sets, cfg.eval, pad_id, generate=generate,
            rank=accelerator.process_index, world_size=accelerator.num_processes,
        )
        row = _eval_row(results)
        if cfg.eval.best_metric and not baseline:
            metrics = {k: r.metrics for k, r in results.items()}
            best = update_best(best, cfg.eval.best_metric, metrics, primary, step)
            row["eval/best_metric"] = float(best["value"])
        trackers.log(row, step=step)
        return results

    at_ends = cfg.eval.generate != "never"
    before = run_eval(0, generate=at_ends, baseline=True) if cfg.eval.baseline else None

    def on_step_end(step: int) -> None:
        every = cfg.eval.every_steps
        if every and step % every == 0 and step < plan.total_steps:
            run_eval(step, generate=cfg.eval.generate == "always")

    loop.train_loop(model, optimizer, scheduler, accelerator, prepared, plan, cfg.train, cfg.seed, pad_id,
                    trackers, cfg.logging.every_steps, on_step_end)
    after = run_eval(plan.total_steps, generate=at_ends)

    summary = Summary(
        after={k: r.metrics for k, r in after.items()},
        before=None if before is None else {k: r.metrics for k, r in before.items()},
        primary=primary, best=best, final_step=plan.total_steps,
    )
    if accelerator.is_main_process:
        adapters.save_final(accelerator.unwrap_model(model), tokenizer, out / "adapter")
        write_results(out / "eval", summary, after)
        for task, result in after.items():
            trackers.log_predictions(task, result.predictions, step=plan.total_steps)
        write_report(out)
        say("\n" + before_after(summary.before, summary.after))
        say(f"\nadapter: {out / 'adapter'}\nmetrics: {out / 'eval' / 'metrics.json'}\nreport:  {out / 'report.html'}")
    trackers.finish()
    accelerator.wait_for_everyone()
    return TrainResult(summary.to_json(), accelerator.unwrap_model(model), tokenizer)


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
