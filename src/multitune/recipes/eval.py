"""`multitune eval`: evaluate a finished run's model (its adapter or full weights), a merged model folder,
or the base model alone, on the run's tasks or any task config, and write the evaluation files.

    multitune eval runs/quickstart                                   # the run's validation rows again
    multitune eval runs/b77 --rows all tasks.banking77.source=test.parquet   # every row of another file
    multitune eval runs/b77 --model base                             # the untrained model alone
    multitune eval exports/merged --config configs/b77.yaml          # a merged model folder

Results go to RUN_DIR/eval (or --output-dir) in the format of `report/results.py`; with the run's own
eval folder the report is rebuilt. A recipe (the `eval` verb from end to end): it uses the evaluation
library in `multitune.eval` and the report, and nothing below imports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from multitune import config as config_mod
from multitune import kinds, tasks
from multitune.config.schema import RunConfig
from multitune.data.prepare import load_splits, training_conversations
from multitune.data.sources import load_rows
from multitune.errors import UserError
from multitune.eval.items import EvalSet, build_eval_set
from multitune.eval.runner import TaskResult, closing_line, evaluate, spread
from multitune.io import read_json
from multitune.models import adapters, load
from multitune.models.run_folder import check_model_folder, check_records, open_run
from multitune.report.results import Summary, load_summary, write_results
from multitune.runtime import print0

Which = Literal["trained", "base"]
Rows = Literal["val", "all"]


@dataclass
class Evaluated:
    summary: Summary
    results: dict[str, TaskResult]
    eval_dir: Path


def run_eval(
    run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), *, config_path: str | Path | None = None,
    which: Which = "trained", rows: Rows = "val", output_dir: str | Path | None = None,
) -> Evaluated:
    """Evaluate and write `metrics.json` and per-task predictions; returns what was written.

    With `eval.baseline` (the default) and a trained model, the base model is evaluated too and shown
    as `before`.
    """
    from accelerate import Accelerator

    run_dir = Path(run_dir)
    run_cfg_path = run_dir / "config.yaml"
    if config_path is None and not run_cfg_path.is_file():
        raise UserError(f"{run_dir} holds no config.yaml: not a run's output_dir",
                        fix="pass a run's output_dir, or --config with the tasks to evaluate on")
    model_dir, kind = _model_dir(run_dir, which)
    eval_dir = Path(output_dir) if output_dir else run_dir / "eval"
    run_cfg = _checked_folder(run_dir, kind, eval_dir)
    cfg = _rows_config(config_mod.load(config_path or run_cfg_path, list(overrides)), rows, overrides)
    run_cfg = run_cfg or cfg
    accelerator = Accelerator()
    tokenizer = load.load_tokenizer(str(model_dir if kind != "base" else _base_name(run_dir, run_cfg)), cfg.model)
    eval_sets = _eval_sets(tokenizer, cfg, rows, _trained_labels(run_dir))
    pad_id = load.pad_id(tokenizer)

    baseline = cfg.eval.baseline and kind != "base"
    print0(accelerator, rows_notice(eval_sets, cfg, rows, baseline))

    def measure(model: Any, which: str) -> dict[str, TaskResult]:
        model.to(accelerator.device)
        results = evaluate(model, tokenizer, eval_sets, cfg.eval, pad_id, generate=cfg.eval.generate != "never",
                           rank=accelerator.process_index, world_size=accelerator.num_processes)
        print0(accelerator, closing_line(f"the {which} model", results,
                                         "validation rows" if rows == "val" else "rows"))
        return results

    after = measure(_load_model(run_dir, kind, model_dir, run_cfg, cfg), "base" if kind == "base" else kind)
    before = measure(load.load_model(_base_name(run_dir, run_cfg), cfg.model).eval(), "base") if baseline else None
    previous = load_summary(eval_dir.parent, eval_dir.name) if (eval_dir / "metrics.json").is_file() else None
    summary = Summary(
        after={k: r.metrics for k, r in after.items()},
        before=None if before is None else {k: r.metrics for k, r in before.items()},
        primary=kinds.primary_metrics([(t.name, t.kind) for t in cfg.tasks]),
        best=previous.best if previous and rows == "val" else None,
        final_step=previous.final_step if previous else None, model=kind,
        retention=tuple(t.name for t in cfg.tasks if not t.train),
        # The run's k-shot figures stay with the rows they were measured on (this command does not redo them).
        shots=previous.shots if previous and rows == "val" else None,
        shots_k=previous.shots_k if previous and rows == "val" else 0,
    )
    if accelerator.is_main_process:
        write_results(eval_dir, summary, after)
        if eval_dir == run_dir / "eval" and (run_dir / "metrics.jsonl").is_file():
            from multitune.report.build import write_report

            write_report(run_dir)
    accelerator.wait_for_everyone()
    return Evaluated(summary, after, eval_dir)


def _rows_config(cfg: RunConfig, rows: Rows, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """`--rows all` means every row: the run's `eval.max_rows` (a sample for the curve) does not apply,
    unless the command line sets it again."""
    if rows != "all" or any(o.split("=", 1)[0].strip() == "eval.max_rows" for o in overrides):
        return cfg
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"max_rows": None})})


def rows_notice(eval_sets: list[EvalSet], cfg: RunConfig, rows: Rows, baseline: bool) -> str:
    """What this evaluation covers, said before it starts: rows per task of how many, why fewer, and
    whether the base model is evaluated too.

    >>> from multitune.config import validate
    >>> cfg = validate({"tasks": [{"name": "b77", "kind": "classification", "source": "x.csv"}],
    ...                 "eval": {"max_rows": 200}})
    >>> print(rows_notice([EvalSet("b77", "classification", list(range(1998)), None, 0)], cfg, "val", True))
    evaluating b77 on 200 of 1,998 validation rows, spread evenly (eval.max_rows: 200; eval.max_rows=null or --rows all for every row)
    then the base model on the same rows (eval.baseline: true; eval.baseline=false skips it)
    """
    cap, where = cfg.eval.max_rows, "validation rows" if rows == "val" else "rows"
    parts = [f"{es.name} on {len(spread(es.items, cap)):,} of {len(es.items):,} {where}" for es in eval_sets]
    line = "evaluating " + ", ".join(parts)
    if cap is not None and any(cap < len(es.items) for es in eval_sets):
        every = "eval.max_rows=null or --rows all" if rows == "val" else "eval.max_rows=null"
        line += f", spread evenly (eval.max_rows: {cap}; {every} for every row)"
    dropped = [f"{es.name} {es.dropped:,}" for es in eval_sets if es.dropped]
    if dropped:
        line += f"; longer than data.max_seq_len and left out: {', '.join(dropped)}"
    if baseline:
        line += "\nthen the base model on the same rows (eval.baseline: true; eval.baseline=false skips it)"
    return line


def _model_dir(run_dir: Path, which: Which) -> tuple[Path, str]:
    """(folder to load, "trained" | "merged" | "base")."""
    if which == "base":
        return run_dir, "base"
    if (run_dir / "adapter").is_dir():
        return run_dir / "adapter", "trained"
    if (run_dir / "config.json").is_file():
        return run_dir, "merged"
    raise UserError(f"{run_dir} holds neither adapter/ (a finished run) nor config.json (a model folder)",
                    fix="pass the output_dir of a run `multitune train` completed, or a merged model's folder")


def _checked_folder(run_dir: Path, kind: str, eval_dir: Path) -> RunConfig | None:
    """Check every file this evaluation reads or rewrites before it starts (`models/run_folder.py`), so a
    damaged one is named up front and nothing is half-rewritten; returns the run's own config, if any."""
    if (run_dir / "adapter").is_dir():
        run_cfg: RunConfig | None = open_run(run_dir).cfg
    else:
        if kind == "merged":
            check_model_folder(run_dir)
        run_cfg = config_mod.load(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    check_records(run_dir, eval_dir)
    return run_cfg


def _base_name(run_dir: Path, run_cfg: RunConfig) -> str:
    """The base model of a run: from the adapter's config, else as the run's config names it (the tiny
    model is rebuilt from the run's own training data, byte for byte, when its cache is gone)."""
    adapter_cfg = run_dir / "adapter" / "adapter_config.json"
    if adapter_cfg.is_file():
        name = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        if Path(name).is_dir() or run_cfg.model.name != "tiny":
            return name
    with_conversations = training_conversations(load_splits(run_cfg)) if run_cfg.model.name == "tiny" else []
    return load.resolve(run_cfg.model, with_conversations, run_cfg.seed)


def _load_model(run_dir: Path, kind: str, model_dir: Path, run_cfg: RunConfig, cfg: RunConfig) -> Any:
    if kind == "base":
        return load.load_model(_base_name(run_dir, run_cfg), cfg.model).eval()
    if (model_dir / "adapter_config.json").is_file():
        base = load.load_model(_base_name(run_dir, run_cfg), cfg.model)
        return adapters.load_adapter(base, model_dir).eval()
    return load.load_model(str(model_dir), cfg.model).eval()


def _eval_sets(tokenizer: Any, cfg: RunConfig, rows: Rows, trained: dict[str, list[str]]) -> list[EvalSet]:
    """Each task's rows to evaluate: the seeded validation split, or every row of its source."""
    out = []
    splits = load_splits(cfg) if rows == "val" else None
    for task_id, task_cfg in enumerate(cfg.tasks):
        spec = kinds.kind(task_cfg.kind)
        labels = trained.get(task_cfg.name) if spec.labels else None
        if splits is not None:
            examples, labels = splits[task_id].val, labels or splits[task_id].labels
        else:
            examples = tasks.examples(task_cfg, load_rows(task_cfg), labels=labels)
            labels = labels or (list(examples[0].candidates or ()) if spec.labels else None)
        out.append(build_eval_set(tokenizer, task_cfg.name, task_cfg.kind, examples, task_id, cfg.data.max_seq_len,
                                  cfg.data.truncation, labels))
    return out


def _trained_labels(run_dir: Path) -> dict[str, list[str]]:
    """task -> the label set it was trained with (data_stats.json), so the candidates match training."""
    path = run_dir / "data_stats.json"
    stats = read_json(path) if path.is_file() else {}  # checked before evaluating
    return {task: list(s["labels"]) for task, s in stats.items() if isinstance(s, dict) and "labels" in s}
