"""`multitune train`: the whole run, top to bottom.

config -> data -> base model -> adapters -> resume or baseline evaluation -> training loop (evaluation,
checkpoints and preemption after each step) -> final evaluation and checkpoint -> adapter, metrics,
predictions, before/after table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multitune import config as config_mod
from multitune.config.schema import RunConfig
from multitune.data.prepare import load_splits, tokenize_splits, training_conversations
from multitune.data.stats import data_summary
from multitune.errors import UserError
from multitune.eval.best import primary_metrics, update_best
from multitune.eval.runner import TaskResult, build_eval_sets, evaluate
from multitune.export import hub
from multitune.export.checkpoints import CheckpointPusher, pusher_for
from multitune.io import replace_dir_atomic, write_errors, write_json_atomic, write_text_atomic
from multitune.models import adapters, gguf, load
from multitune.report.build import write_report
from multitune.report.results import Summary, write_results
from multitune.report.table import before_after
from multitune.runtime import configure_cpu_threads
from multitune.tracking import Trackers, make_trackers
from multitune.train import checkpoint, loop, optim, resume
from multitune.train.signals import Preempted, StopRequests
from multitune.train.state import TrainState


@dataclass
class TrainResult:
    metrics: dict[str, Any]  # the contents of eval/metrics.json
    model: Any  # the trained model (peft-wrapped for adapters), unwrapped from any distributed wrapper
    tokenizer: Any


def run(cfg: RunConfig, force: bool = False) -> TrainResult:
    """Train, evaluate and save one run as the config says, resuming it if `output_dir` holds a
    checkpoint (`checkpoint.resume`). `force` resumes even when the config or data changed."""
    cfg = gguf.pin(cfg)  # a GGUF base's hash goes into config.yaml
    accelerator, config_yaml = _start(cfg, force)
    say = accelerator.print  # only the main process prints
    out = Path(cfg.output_dir)
    splits, model_name, tokenizer, prepared = _data(cfg, accelerator)
    model, optimizer, scheduler, plan = _model(cfg, accelerator, model_name, prepared)

    # Resume from the newest usable checkpoint, or start fresh.
    meta = {"world_size": accelerator.num_processes, "data_fingerprint": resume.data_fingerprint(prepared)}
    state, resumed_from = resume.restore(cfg.checkpoint.resume, out, accelerator, model, optimizer, scheduler,
                                         meta, config_yaml, force)
    if accelerator.is_main_process:
        write_text_atomic(out / "config.yaml", config_yaml)
        write_json_atomic(out / "data_stats.json", prepared.stats)
    trackers = make_trackers(cfg, accelerator.is_main_process, keep_rows=state.metrics_rows if resumed_from else None,
                             run_id=state.tracker_run_id)
    state.tracker_run_id = trackers.run_id
    say(f"training: {plan.total_steps} steps ({plan.steps_per_epoch}/epoch), global batch {plan.global_batch_size}"
        + (" packed rows" if plan.packed else "")
        + (f"; resumed from {resumed_from} (step {state.step})" if resumed_from else ""))

    hooks = _Hooks(cfg, accelerator, model, optimizer, scheduler, tokenizer, state, trackers, config_yaml, meta,
                   build_eval_sets(tokenizer, splits, cfg.data.max_seq_len, cfg.data.truncation), plan.total_steps,
                   resumed_from)
    if resumed_from is None and cfg.eval.baseline:
        state.baseline = {k: r.metrics for k, r in hooks.evaluate(0, baseline=True).items()}
    hooks.pusher = pusher_for(cfg) if accelerator.is_main_process else None
    try:
        with StopRequests(accelerator.is_main_process) as stop:
            hooks.stop = stop
            loop.train_loop(model, optimizer, scheduler, accelerator, prepared, plan, cfg.train, cfg.seed,
                            load.pad_id(tokenizer), trackers, cfg.logging.every_steps, state, hooks.after_step)
            after = hooks.evaluate(plan.total_steps, final=True)
            hooks.save_checkpoint()
    finally:
        if hooks.pusher is not None:  # the upload under way and the newest waiting one finish first
            hooks.pusher.close()

    summary = Summary(after={k: r.metrics for k, r in after.items()}, before=state.baseline,
                      primary=hooks.primary, best=state.best, final_step=plan.total_steps)
    plain = accelerator.unwrap_model(model, keep_torch_compile=False)  # no DDP/FSDP or compile wrapper
    final_weights = adapters.gather_for_saving(plain, trainable_only=cfg.adapter.method != "full")
    if accelerator.is_main_process:
        _write_outputs(out, plain, tokenizer, final_weights, summary, after, trackers)
        say("\n" + before_after(summary.before, summary.after))
        say(f"\nadapter: {out / 'adapter'}\nmetrics: {out / 'eval' / 'metrics.json'}\nreport:  {out / 'report.html'}")
    trackers.finish()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:  # shipping: the model card, and the push when hub.push_at_end asks
        hub.after_training(cfg)
    return TrainResult(summary.to_json(), plain, tokenizer)


def _start(cfg: RunConfig, force: bool) -> tuple[Any, str]:
    """Refuse what cannot work before anything heavy loads; the Accelerator; a writable output folder."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    load.check_hardware(cfg)
    hub.preflight(cfg)  # a push that cannot happen fails now, not after hours of training
    # cpu=True on a machine without CUDA makes torchrun's processes one gloo group (DDP on CPUs); the
    # topology otherwise comes from the launcher and its accelerate config, never from this code.
    threads = configure_cpu_threads()  # before the first parallel region fixes the pool
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=not torch.cuda.is_available(),
                              dynamo_plugin=_dynamo(cfg))
    if threads:
        accelerator.print(threads)
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    config_yaml = config_mod.dump(cfg)
    if accelerator.is_main_process:
        _prepare_output_dir(out)
    resume.refuse_changed_config(cfg.checkpoint.resume, out, config_yaml, force)
    accelerator.wait_for_everyone()
    return accelerator, config_yaml


def _data(cfg: RunConfig, accelerator: Any) -> tuple[list, str, Any, Any]:
    """Rows -> examples -> seeded split -> tokens; the tiny model (if asked for) is built from the
    training split. Returns the splits, the model's name or folder, the tokenizer and the prepared data."""
    splits = load_splits(cfg)
    with accelerator.main_process_first():
        model_name = load.resolve(cfg.model, training_conversations(splits), cfg.seed)
    tokenizer = load.load_tokenizer(model_name, cfg.model)
    with accelerator.main_process_first():  # the main process fills the tokenised cache, the others read it
        prepared = tokenize_splits(tokenizer, splits, cfg)
    accelerator.print(data_summary(prepared, cfg.seed))
    return splits, model_name, tokenizer, prepared


def _model(cfg: RunConfig, accelerator: Any, model_name: str, prepared: Any) -> tuple[Any, Any, Any, loop.Plan]:
    """The base with its adapters, the optimizer and schedule, prepared for the topology."""
    from accelerate.utils import set_seed

    quantization = cfg.quantization if cfg.adapter.method == "qlora" else None
    base = load.load_model(model_name, cfg.model, quantization, accelerator.device)
    # Seed again: building the tiny model draws random numbers only when it is not cached yet, and the
    # adapters' initialisation must not depend on that.
    set_seed(cfg.seed)
    model = adapters.attach(base, cfg.adapter, cfg.train.gradient_checkpointing)
    trainable, total = adapters.count_parameters(model)
    accelerator.print(f"model {cfg.model.name} ({model_name}): {cfg.adapter.method}, "
                      f"{trainable:,} of {total:,} parameters trainable")
    plan = loop.make_plan(cfg.train, prepared, cfg.seed, accelerator.num_processes)
    optimizer = optim.build_optimizer(model, cfg.train)
    scheduler = optim.build_scheduler(optimizer, cfg.train, plan.total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, scheduler, plan


class _Hooks:
    """What runs between optimizer steps: evaluation (tracking the best by `eval.best_metric`),
    checkpoints and their rotation, and the stop on a signal."""

    def __init__(self, cfg: RunConfig, accelerator: Any, model: Any, optimizer: Any, scheduler: Any, tokenizer: Any,
                 state: TrainState, trackers: Trackers, config_yaml: str, meta: dict[str, Any], eval_sets: list,
                 total_steps: int, resumed_from: Path | None) -> None:
        self.cfg, self.accelerator, self.model, self.optimizer, self.scheduler = cfg, accelerator, model, optimizer, scheduler
        self.tokenizer, self.state, self.trackers, self.config_yaml, self.meta = tokenizer, state, trackers, config_yaml, meta
        self.eval_sets = eval_sets  # validation rows tokenised once for all the run's evaluations
        self.total_steps = total_steps
        self.primary = primary_metrics([(t.name, t.kind) for t in cfg.tasks])
        self.out = Path(cfg.output_dir)
        # The newest checkpoint on disk: a step is never saved twice (a best, a regular save and the final
        # one can fall on the same step, and a resumed run starts on its checkpoint).
        self.last_save = {"step": state.step, "time": time.monotonic(), "path": resumed_from}
        self.stop: StopRequests | None = None
        self.pusher: CheckpointPusher | None = None  # uploads each checkpoint (hub.push_checkpoints)

    def evaluate(self, step: int, *, baseline: bool = False, final: bool = False) -> dict[str, TaskResult]:
        """Evaluate every task; generation metrics where `eval.generate` says. The baseline is never a
        candidate for the best; a new best in the middle of a run is checkpointed so rotation keeps it."""
        cfg, state = self.cfg.eval, self.state
        generate = cfg.generate == "always" or (cfg.generate == "ends" and (baseline or final))
        plain = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)  # eval shapes vary: not compiled
        results = evaluate(plain, self.tokenizer, self.eval_sets, cfg,
                           load.pad_id(self.tokenizer), generate=generate, rank=self.accelerator.process_index,
                           world_size=self.accelerator.num_processes)
        if state.last_eval_step == step:  # a run resumed at its very end has logged this one already
            return results
        row = _eval_row(results)
        if cfg.best_metric and not baseline:
            state.best = update_best(state.best, cfg.best_metric, {k: r.metrics for k, r in results.items()},
                                     self.primary, step)
            row["eval/best_metric"] = float(state.best["value"])
            if state.best["step"] == step and not final and self._checkpointing():
                self.save_checkpoint()
        self.trackers.log(row, step=step)
        state.last_eval_step = step
        return results

    def save_checkpoint(self) -> Path:
        state, accelerator = self.state, self.accelerator
        if self.last_save["path"] is not None and self.last_save["step"] == state.step:
            return self.last_save["path"]
        state.metrics_rows = self.trackers.rows_written
        path = checkpoint.save(self.out, accelerator, self.model, self.optimizer, self.scheduler, state,
                               self.config_yaml, self.meta)
        if accelerator.is_main_process:
            best_step = state.best["step"] if state.best else None
            checkpoint.rotate(self.out, self.cfg.checkpoint.keep_last, best_step)
        if self.pusher is not None:
            self.pusher.submit(path, state.step)
        self.last_save.update(step=state.step, time=time.monotonic(), path=path)
        return path

    def after_step(self, state: TrainState) -> None:
        every = self.cfg.eval.every_steps
        total = self.total_steps
        if every and state.step % every == 0 and state.step < total:
            self.evaluate(state.step)
        # No checkpoint in the middle of a run of non-finite steps: rotation must never push out the
        # last one saved before them.
        healthy = state.consecutive_bad_steps == 0
        if state.step < total and healthy and _checkpoint_due(self.cfg, state.step, self.last_save, self.accelerator):
            self.save_checkpoint()
        if self.stop is not None and self.stop.agreed(self.accelerator):
            path = self.save_checkpoint()
            self.trackers.finish()
            raise Preempted(self.stop.received or "a signal", state.step, str(path))

    def _checkpointing(self) -> bool:
        return bool(self.cfg.checkpoint.every_steps or self.cfg.checkpoint.every_minutes)


def _dynamo(cfg: RunConfig) -> Any:
    if not cfg.train.compile:
        return None
    from accelerate.utils import TorchDynamoPlugin

    # dynamic=True: batches are padded to their longest example, so shapes change from step to step;
    # compiling for symbolic shapes avoids a recompilation for every new length.
    return TorchDynamoPlugin(backend="inductor", dynamic=True)


def _prepare_output_dir(out: Path) -> None:
    """Create output_dir (or say why it cannot be written) and drop checkpoint writes cut by a kill."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".multitune-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the output folder: {e.strerror}", where=str(out),
                        fix="choose a writable output_dir, or fix the folder's permissions or free space") from None
    for path in checkpoint.remove_partial(out):
        print(f"removed an unfinished checkpoint write: {path}")


def _checkpoint_due(cfg: RunConfig, step: int, last_save: dict[str, float], accelerator: Any) -> bool:
    every_steps, every_minutes = cfg.checkpoint.every_steps, cfg.checkpoint.every_minutes
    due = bool(every_steps and step % every_steps == 0)
    if every_minutes and not due:
        import torch

        # The main process's clock decides, so every process saves at the same step.
        late = accelerator.is_main_process and time.monotonic() - last_save["time"] >= every_minutes * 60
        due = bool(accelerator.reduce(torch.tensor([float(late)], device=accelerator.device), "max").item())
    return due


def _write_outputs(out: Path, model: Any, tokenizer: Any, weights: dict[str, Any], summary: Summary,
                   after: dict[str, TaskResult], trackers: Trackers) -> None:
    """The adapter (or the whole model) and tokenizer, replacing any earlier one in one rename; the
    evaluation files and the HTML report; the prediction tables to the trackers."""
    try:
        tmp = out / ".adapter.tmp"
        adapters.save_final(model, tokenizer, tmp, weights)
        replace_dir_atomic(tmp, out / "adapter")
        write_results(out / "eval", summary, after)
        write_report(out)
    except write_errors() as e:
        raise UserError(f"could not write the final adapter and metrics: {e}", where=str(out),
                        fix="free disk space or fix permissions, then run the same command again: it resumes "
                            "from the final checkpoint and only writes these") from None
    for task, result in after.items():
        trackers.log_predictions(task, result.predictions, step=summary.final_step)


def _eval_row(results: dict[str, TaskResult]) -> dict[str, float]:
    return {f"eval/{task}/{k}": v for task, r in results.items() for k, v in r.metrics.items() if k != "rows"}
