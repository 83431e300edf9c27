"""`multitune train`: the whole run, top to bottom, in the shape of a torchtune recipe.

`setup` (config -> data -> base model -> adapters -> resume or start) -> `train` (baseline evaluation;
the loop: one step, its log line, evaluation, checkpoint, stop check; the final evaluation and
checkpoint) -> outputs (adapter, metrics, predictions, before/after table) -> `cleanup` (trackers,
checkpoint uploads). The step's mathematics is in `train/loop.py`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multitune import config as config_mod
from multitune.best import update_best
from multitune.config.device import describe as describe_device_settings
from multitune.config.schema import RunConfig
from multitune.data.prepare import Prepared, load_splits, tokenize_splits, training_conversations
from multitune.data.stats import data_summary
from multitune.errors import UserError
from multitune.eval.runner import (
    EvalSet,
    TaskResult,
    baseline_config,
    baseline_notice,
    build_eval_sets,
    closing_line,
    evaluate,
)
from multitune.eval.shots import build_shot_sets
from multitune.eval.shots import evaluate_shots as evaluate_shots_on
from multitune.export import hub
from multitune.export.checkpoints import CheckpointPusher, pusher_for
from multitune.io import replace_dir_atomic, write_errors, write_json_atomic, write_text_atomic
from multitune.kinds import primary_metrics
from multitune.models import adapters, attention, gguf, load
from multitune.report.build import write_report
from multitune.report.results import Summary, write_results
from multitune.report.run_stats import RUN_STATS, run_stats, time_line
from multitune.report.table import before_after
from multitune.runtime import configure_cpu_threads, peak_memory, print0, tf32_matmuls
from multitune.stall import run_warnings
from multitune.tracking import Trackers, make_trackers
from multitune.train import checkpoint, loop, optim, resume, shard
from multitune.train.collectives import any_process
from multitune.train.signals import Stopped, StopRequests
from multitune.train.state import StepResult, TrainState


@dataclass
class TrainResult:
    metrics: dict[str, Any] | None  # the contents of eval/metrics.json; None when stopped by a signal
    model: Any  # the trained model (peft-wrapped for adapters), unwrapped from any distributed wrapper
    tokenizer: Any
    stopped: Stopped | None = None  # set when a signal ended the run after a checkpoint


@dataclass
class LastSave:
    """The newest checkpoint on disk: a step is never saved twice (a best, a regular save and the final
    one can fall on the same step, and a resumed run starts on its checkpoint)."""

    step: int
    time: float  # time.monotonic() when it was written, for checkpoint.every_minutes
    path: Path | None


@dataclass
class Run:
    """Everything `setup` builds and the loop uses: one small state object, filled once."""

    cfg: RunConfig
    accelerator: Any
    config_yaml: str
    meta: dict[str, Any]  # world size and data fingerprint, saved with every checkpoint
    tokenizer: Any
    prepared: Prepared
    eval_sets: list[EvalSet]  # validation rows tokenised once for all the run's evaluations
    model: Any
    optimizer: Any
    scheduler: Any
    plan: loop.Plan
    state: TrainState
    trackers: Trackers
    resumed_from: Path | None
    primary: dict[str, str]  # task -> its primary metric
    last_save: LastSave
    pusher: CheckpointPusher | None = None  # uploads each checkpoint (hub.push_checkpoints), main process only
    initial: dict[str, Any] | None = None  # PiSSA / OLoRA start (adapters.initial_weights), for saving
    params: tuple[int, int] = (0, 0)  # (trainable, total) parameters
    started: float = 0.0  # time.monotonic() when setup began: this session's share of wall_seconds
    shot_sets: list[EvalSet] = field(default_factory=list)  # validation rows as k-shot prompts (eval.baseline_shots)
    out: Path = field(init=False)
    wall_before: float = field(init=False)  # wall_seconds of the sessions before this one

    def __post_init__(self) -> None:
        self.out = Path(self.cfg.output_dir)
        self.wall_before = self.state.wall_seconds

    def account(self) -> None:
        """Bring the state's wall time and peak memory up to now (before it is checkpointed or reported)."""
        self.state.account(self.wall_before + time.monotonic() - self.started, peak_memory()[0])


def run(cfg: RunConfig, force: bool = False) -> TrainResult:
    """Train, evaluate and save one run as the config says, resuming it if `output_dir` holds a
    checkpoint (`checkpoint.resume`). `force` resumes even when the config or data changed. A SIGTERM
    or a first Ctrl-C ends the run after a checkpoint, with `TrainResult.stopped` set."""
    cfg = gguf.pin(cfg)  # a GGUF base's hash goes into config.yaml
    cfg = load.for_this_machine(cfg)  # so do the precision and batch layout chosen for this device
    r = setup(cfg, force)
    try:
        outcome = train(r)
        if isinstance(outcome, Stopped):
            print0(r.accelerator, outcome.message(), file=sys.stderr, flush=True)
            return TrainResult(None, None, r.tokenizer, stopped=outcome)
        result = write_outputs(r, outcome)
    finally:
        cleanup(r)
    r.accelerator.wait_for_everyone()
    if r.accelerator.is_main_process:  # shipping: the model card, and the push when hub.push_at_end asks
        hub.after_training(cfg)
    return result


def setup(cfg: RunConfig, force: bool) -> Run:
    """Refuse what cannot work, load data and model, and restore the newest usable checkpoint (or start
    fresh); write the resolved config and data statistics."""
    started = time.monotonic()
    accelerator, config_yaml, topology = _start(cfg, force)
    splits = load_splits(cfg)
    with accelerator.main_process_first():
        model_name = load.resolve(cfg.model, training_conversations(splits), cfg.seed)
    tokenizer = load.load_tokenizer(model_name, cfg.model)
    with accelerator.main_process_first():  # the main process fills the tokenised cache, the others read it
        prepared = tokenize_splits(tokenizer, splits, cfg)
    print0(accelerator, data_summary(prepared, cfg.seed))
    parts = _model(cfg, accelerator, model_name, prepared, topology)

    out = Path(cfg.output_dir)
    meta = {"world_size": accelerator.num_processes, "data_fingerprint": resume.data_fingerprint(prepared)}
    state, resumed_from = resume.restore(
        cfg.checkpoint.resume, out, accelerator=accelerator, model=parts.model, optimizer=parts.optimizer,
        scheduler=parts.scheduler, meta=meta, config_yaml=config_yaml, force=force)
    if accelerator.is_main_process:
        write_text_atomic(out / "config.yaml", config_yaml)
        write_json_atomic(out / "data_stats.json", prepared.stats)
    trackers = make_trackers(cfg, accelerator.is_main_process, keep_rows=state.metrics_rows if resumed_from else None,
                             run_id=state.tracker_run_id)
    state.attach_tracker(trackers.run_id)
    plan = parts.plan
    print0(
        accelerator,
        f"training: {plan.total_steps} steps ({plan.steps_per_epoch}/epoch), global batch {plan.global_batch_size}"
        + (" packed rows" if plan.packed else "") + (" in shared-prefix rows" + (
            ", attended densely (block attention has no place for the virtual tokens)" if cfg.adapter.virtual_tokens
            else "") if plan.share_prefix else "")
        + (f"; resumed from {resumed_from} (step {state.step})" if resumed_from else ""))
    return Run(
        cfg=cfg, accelerator=accelerator, config_yaml=config_yaml, meta=meta, tokenizer=tokenizer,
        prepared=prepared, eval_sets=build_eval_sets(tokenizer, splits, cfg.data.max_seq_len, cfg.data.truncation),
        model=parts.model, optimizer=parts.optimizer, scheduler=parts.scheduler, plan=plan, state=state,
        trackers=trackers,
        resumed_from=resumed_from, primary=primary_metrics([(t.name, t.kind) for t in cfg.tasks]),
        last_save=LastSave(state.step, time.monotonic(), resumed_from),
        pusher=pusher_for(cfg) if accelerator.is_main_process else None, initial=parts.initial,
        params=parts.params, started=started,
        shot_sets=build_shot_sets(tokenizer, splits, cfg.eval.baseline_shots, cfg.seed, cfg.data.max_seq_len,
                                  cfg.data.truncation) if cfg.eval.baseline_shots else [],
    )


def train(r: Run) -> dict[str, TaskResult] | Stopped:
    """The baseline, the steps from `state.step` to the plan's last, and the final evaluation and
    checkpoint. Returns the final evaluation, or `Stopped` when a signal ended the loop."""
    from tqdm.auto import tqdm

    cfg, accelerator, state, total = r.cfg, r.accelerator, r.state, r.plan.total_steps
    if r.resumed_from is None and cfg.eval.baseline:
        baseline = {k: res.metrics for k, res in evaluate_run(r, 0, baseline=True).items()}
        state.record_baseline(baseline, evaluate_shots(r) if r.shot_sets else None)
    bar = tqdm(total=total, initial=state.step, disable=not accelerator.is_main_process,
               desc="train", unit="step", dynamic_ncols=True)
    state.start_interval(len(r.prepared.task_names))
    started = time.perf_counter()  # of the current log interval
    r.model.train()
    with StopRequests(accelerator.is_main_process) as stop:
        while state.step < total:
            batches = loop.batches_for_step(
                r.prepared, r.plan, step=state.step, seed=cfg.seed, rank=accelerator.process_index,
                pad_id=load.pad_id(r.tokenizer), device=accelerator.device)
            lr = r.scheduler.get_last_lr()[0]
            step_started = time.perf_counter()
            result = loop.train_step(
                r.model, r.optimizer, r.scheduler, accelerator=accelerator, micro_batches=batches,
                max_grad_norm=cfg.train.max_grad_norm, n_tasks=len(r.prepared.task_names),
                answer_logits_only=cfg.train.answer_logits_only)
            state.record_step(result, seconds=time.perf_counter() - step_started)
            bar.update(1)
            if result.bad:
                _report_bad_step(r, result)
            if state.step % cfg.logging.every_steps == 0 or state.step == total:
                _log_interval(r, result, lr=lr, started=started, bar=bar)
                started = time.perf_counter()
            if cfg.eval.every_steps and state.step % cfg.eval.every_steps == 0 and state.step < total:
                evaluate_run(r, state.step)
                # A new best in the middle of a run is checkpointed, so rotation keeps it.
                if state.best and state.best["step"] == state.step and _checkpointing(cfg):
                    save_checkpoint(r)
            # No checkpoint in a run of non-finite steps: rotation must never push out the last one
            # saved before them. every_minutes: the main process's clock decides for all (an all-reduce).
            if state.step < total and state.consecutive_bad_steps == 0:
                every, minutes = cfg.checkpoint.every_steps, cfg.checkpoint.every_minutes
                due = bool(every and state.step % every == 0)
                if minutes and not due:
                    late = time.monotonic() - r.last_save.time >= minutes * 60
                    due = any_process(late and accelerator.is_main_process, accelerator)
                if due:
                    save_checkpoint(r)
            # A stop signal on any process stops every process at this step (an all-reduce).
            if any_process(stop.received is not None, accelerator):
                bar.close()
                return Stopped(stop.received or "a signal", state.step, save_checkpoint(r))
        bar.close()
        after = evaluate_run(r, total, final=True)
        save_checkpoint(r)
    return after


def cleanup(r: Run) -> None:
    """Close the trackers; let the checkpoint upload under way finish. Runs however the run ended."""
    try:
        r.trackers.finish()
    finally:
        if r.pusher is not None:
            r.pusher.close()


@contextmanager
def evaluating(r: Run) -> Iterator[Any]:
    """The model to evaluate: unwrapped (eval shapes vary: not compiled) and under the run's autocast as a
    whole (`generate` calls the model past the forward accelerate wrapped in it, and the adapters take bf16
    inputs against their float32 weights: models/adapters.py). Afterwards the FSDP root is resharded
    (forwards without a backward leave it gathered) and the time goes to `state.eval_seconds`."""
    started = time.perf_counter()
    plain = r.accelerator.unwrap_model(r.model, keep_torch_compile=False)
    with r.accelerator.autocast():
        yield plain
    shard.reshard(plain)
    r.state.record_eval_time(time.perf_counter() - started)


def evaluate_run(r: Run, step: int, *, baseline: bool = False, final: bool = False) -> dict[str, TaskResult]:
    """Evaluate every task (generation metrics where `eval.generate` says) and log it; the baseline
    (on at most `eval.baseline_max_rows` rows) is never a candidate for the best (`eval.best_metric`),
    which ignores the retention tasks unless it names one. Later evaluations warn about a trained task
    stuck at its zero-shot value while its loss falls (`stall.py`)."""
    cfg, state = r.cfg.eval, r.state
    generate = cfg.generate == "always" or (cfg.generate == "ends" and (baseline or final))
    if baseline and (notice := baseline_notice(r.eval_sets, cfg)):  # a sample is said before it runs
        print0(r.accelerator, notice)
    with evaluating(r) as plain:
        results = evaluate(plain, r.tokenizer, r.eval_sets, cfg=baseline_config(cfg) if baseline else cfg,
                           pad_id=load.pad_id(r.tokenizer), generate=generate,
                           rank=r.accelerator.process_index, world_size=r.accelerator.num_processes)
    what = "the baseline" if baseline else f"the end (step {step})" if final else f"step {step}"
    print0(r.accelerator, closing_line(what, results))
    if state.last_eval_step == step:  # a run resumed at its very end has logged this one already
        return results
    trained = {t.name: t.kind for t in r.cfg.tasks if t.train}
    metrics = {k: res.metrics for k, res in results.items()}
    if not baseline:
        for warning in run_warnings(trained, state.baseline, metrics, {k: v.predictions for k, v in results.items()}):
            print0(r.accelerator, f"\nwarning: step {step}: {warning}")
    row = {f"eval/{task}/{k}": v for task, res in results.items() for k, v in res.metrics.items() if k != "rows"}
    best = state.best
    if cfg.best_metric and not baseline:
        scores = {k: m for k, m in metrics.items() if k in trained or cfg.best_metric.startswith(f"{k}/")}
        best = update_best(state.best, cfg.best_metric, scores, r.primary, step=step)
        row["eval/best_metric"] = float(best["value"])
    r.trackers.log(row, step=step)
    state.record_eval(step, best)
    return results


def evaluate_shots(r: Run) -> dict[str, dict[str, float]]:
    """The in-context baseline (`eval.baseline_shots`): the baseline's rows with k training examples in
    each prompt. Logged at step 0, never a candidate for the best."""
    with evaluating(r) as plain:
        metrics = evaluate_shots_on(plain, r.tokenizer, r.shot_sets, r.cfg.eval, load.pad_id(r.tokenizer),
                                    rank=r.accelerator.process_index, world_size=r.accelerator.num_processes)
    k = r.cfg.eval.baseline_shots
    r.trackers.log({f"eval_{k}shot/{t}/{name}": v for t, m in metrics.items() for name, v in m.items()}, step=0)
    return metrics


def save_checkpoint(r: Run) -> Path:
    """Checkpoint the current step (once), rotate old ones out keeping the best, queue the upload."""
    state = r.state
    if r.last_save.path is not None and r.last_save.step == state.step:
        return r.last_save.path
    state.mark_checkpoint(r.trackers.rows_written)
    r.account()
    path = checkpoint.save(r.out, r.accelerator, model=r.model, optimizer=r.optimizer, scheduler=r.scheduler,
                           state=state, config_yaml=r.config_yaml, meta=r.meta)
    if r.accelerator.is_main_process:
        checkpoint.rotate(r.out, r.cfg.checkpoint.keep_last, state.best["step"] if state.best else None)
    if r.pusher is not None:
        r.pusher.submit(path, state.step)
    r.last_save = LastSave(state.step, time.monotonic(), path)
    return path


def write_outputs(r: Run, after: dict[str, TaskResult]) -> TrainResult:
    """The adapter (or the whole model) and tokenizer, replacing any earlier one in one rename; the
    evaluation files, the HTML report, the prediction tables to the trackers; the before/after table."""
    summary = Summary(after={k: res.metrics for k, res in after.items()}, before=r.state.baseline,
                      primary=r.primary, best=r.state.best, final_step=r.plan.total_steps, shots=r.state.shots,
                      shots_k=r.cfg.eval.baseline_shots, retention=tuple(r.prepared.retention))
    plain = r.accelerator.unwrap_model(r.model, keep_torch_compile=False)  # no DDP/FSDP or compile wrapper
    weights = adapters.gather_for_saving(plain, trainable_only=r.cfg.adapter.method != "full",
                                         keep=r.accelerator.is_main_process)  # a collective; kept by one
    if r.accelerator.is_main_process:
        try:
            tmp = r.out / ".adapter.tmp"
            adapters.save_final(plain, r.tokenizer, tmp, weights, r.initial)
            replace_dir_atomic(tmp, r.out / "adapter")
            r.account()
            write_json_atomic(r.out / RUN_STATS, run_stats(r.out, r.cfg.adapter.method, r.params, r.state,
                                                           peak_memory()[1]))
            write_results(r.out / "eval", summary, after)
            write_report(r.out)
        except write_errors() as e:
            raise UserError(f"could not write the final adapter and metrics: {e}", where=str(r.out),
                            fix="free disk space or fix permissions, then run the same command again: it "
                                "resumes from the final checkpoint and only writes these") from None
    for task, result in after.items():  # the trackers are null on the other processes
        r.trackers.log_predictions(task, result.predictions, step=summary.final_step)
    print0(r.accelerator,
           "\n" + before_after(summary.before, summary.after, summary.shots, summary.shots_k, summary.retention))
    print0(r.accelerator, "\n" + time_line(r.state))
    print0(r.accelerator, f"\nadapter: {r.out / 'adapter'}\nmetrics: {r.out / 'eval' / 'metrics.json'}\n"
                          f"report:  {r.out / 'report.html'}")
    return TrainResult(summary.to_json(), plain, r.tokenizer)


def _start(cfg: RunConfig, force: bool) -> tuple[Any, str, shard.Topology]:
    """Refuse what cannot work before anything heavy loads; the Accelerator and the topology the launch
    asks for; a writable output folder."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    load.check_hardware(cfg)
    hub.preflight(cfg)  # a push that cannot happen fails now, not after hours of training
    # cpu=True without CUDA makes torchrun's processes one gloo group. The topology comes from the launch;
    # multitune applies FSDP itself (train/shard.py), so accelerate is shown plain data parallelism.
    threads = configure_cpu_threads()  # before the first parallel region fixes the pool
    tf32_matmuls(torch.cuda.is_available())
    with shard.hidden_from_accelerate():
        accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=not torch.cuda.is_available(),
                                  dynamo_plugin=_dynamo(cfg))
    topology = shard.topology(accelerator.num_processes, cfg.train.mixed_precision)
    if threads:
        print0(accelerator, threads)
    print0(accelerator, describe_device_settings(cfg))
    if accelerator.num_processes > 1:
        print0(accelerator, f"{accelerator.num_processes} processes: {topology.describe()}")
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    config_yaml = config_mod.dump(cfg)
    removed = checkpoint.prepare_output_dir(out) if accelerator.is_main_process else []  # one process tidies
    for path in removed:
        print0(accelerator, f"removed an unfinished checkpoint write: {path}")
    resume.refuse_changed_config(cfg.checkpoint.resume, out, config_yaml, force)
    accelerator.wait_for_everyone()
    return accelerator, config_yaml, topology


@dataclass
class _Trainable:
    model: Any  # prepared by accelerate for the topology
    optimizer: Any
    scheduler: Any
    plan: loop.Plan
    initial: dict[str, Any] | None  # adapters.initial_weights
    params: tuple[int, int]  # (trainable, total)


def _model(cfg: RunConfig, accelerator: Any, model_name: str, prepared: Prepared,
           topology: shard.Topology) -> _Trainable:
    """The base with its adapters (sharded if the launch asks), optimizer and schedule; the plan."""
    from accelerate.utils import set_seed

    quantization = cfg.quantization if cfg.adapter.method == "qlora" else None
    # FSDP's efficient loading: process 0 alone reads the weights (bitsandbytes quantises as it loads)
    efficient = topology.efficient_loading and quantization is None
    base = load.load_model(model_name, cfg.model, quantization, accelerator.device,
                           empty=efficient and not accelerator.is_main_process)
    # Seed again: building the tiny model draws random numbers only when it is not cached yet, and the
    # adapters' initialisation must not depend on that.
    set_seed(cfg.seed)
    model = adapters.attach(base, cfg.adapter, cfg.train.gradient_checkpointing,
                            autocast=cfg.train.mixed_precision != "no")
    initial = adapters.initial_weights(model, cfg.adapter)  # PiSSA / OLoRA: what the saved adapter is converted by
    trainable, total = adapters.count_parameters(model)
    print0(accelerator, f"model {cfg.model.name} ({model_name}): {cfg.adapter.method}, "
                        f"{trainable:,} of {total:,} parameters trainable")
    # Shared-prefix rows: the attention they run under (blocks, on a sdpa model) and the one mask they carry.
    prefix_mask = attention.select_for_shared_prefix(model, cfg.adapter.virtual_tokens) if cfg.shares_prefix else None
    model = shard.shard_model(model, topology, accelerator)  # before the optimizer: FSDP2 swaps the parameters
    if shard.is_sharded(model):
        print0(accelerator, f"sharded: {shard.describe_shards(model)}"
                            + ("; weights read by process 0 alone and broadcast" if efficient else ""))
    plan = loop.make_plan(cfg.train, prepared, cfg.seed, accelerator.num_processes, share_prefix=cfg.shares_prefix,
                          prefix_mask=prefix_mask)
    optimizer = optim.build_optimizer(model, cfg.train, cfg.adapter.loraplus_lr_ratio)
    scheduler = optim.build_scheduler(optimizer, cfg.train, plan.total_steps)
    model, optimizer = shard.prepare(accelerator, model, optimizer)
    return _Trainable(model, optimizer, scheduler, plan, initial, (trainable, total))


def _log_interval(r: Run, result: StepResult, *, lr: float, started: float, bar: Any) -> None:
    """The metrics.jsonl row of the steps since the last one, and the progress bar's figures."""
    state, names = r.state, r.prepared.task_names
    row = state.close_interval(names, started)
    bar.set_postfix(loss=f"{row['train/loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")
    r.trackers.log({**row, "lr": lr, "grad_norm": result.grad_norm,
                    "epoch": state.step / r.plan.steps_per_epoch}, step=state.step)


class NonFiniteTraining(UserError):
    """Too many consecutive steps with a NaN or infinite loss or gradient norm."""


def _report_bad_step(r: Run, result: StepResult) -> None:
    """Log a skipped non-finite step; stop the run after `train.max_bad_steps` of them in a row."""
    state = r.state
    r.trackers.log({"skipped_non_finite": 1, "bad_steps": state.bad_steps, "loss": result.loss,
                    "grad_norm": result.grad_norm}, step=state.step)
    print0(r.accelerator, f"\nwarning: step {state.step} skipped: loss {result.loss}, gradient norm "
                          f"{result.grad_norm} ({state.consecutive_bad_steps} in a row, {state.bad_steps} in all)")
    if state.consecutive_bad_steps >= r.cfg.train.max_bad_steps:
        raise NonFiniteTraining(
            f"training stopped: {state.consecutive_bad_steps} consecutive steps (up to step {state.step}) had a "
            "NaN or infinite loss or gradient norm",
            fix="lower train.learning_rate, keep train.max_grad_norm set, check the data for empty or broken "
                "rows, or use bf16 instead of fp16; the last checkpoint was saved before these steps and is intact",
        )


def _checkpointing(cfg: RunConfig) -> bool:
    return bool(cfg.checkpoint.every_steps or cfg.checkpoint.every_minutes)


def _dynamo(cfg: RunConfig) -> Any:
    if not cfg.train.compile:
        return None
    from accelerate.utils import TorchDynamoPlugin

    # dynamic=True: batches are padded to their longest example, so shapes change from step to step;
    # compiling for symbolic shapes avoids a recompilation for every new length.
    return TorchDynamoPlugin(backend="inductor", dynamic=True)
