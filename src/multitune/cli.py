"""The `multitune` command line. Thin: it parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from multitune.errors import EXIT_ABORTED, EXIT_PREEMPTED, EXIT_USER_ERROR, UserError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # Overrides may follow options (`eval RUN --rows all k=v`), which argparse alone leaves unparsed.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    _quiet_libraries()
    from multitune.train.signals import Preempted

    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Preempted as e:
        print(str(e), file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("\naborted; the last complete checkpoint (if any) is intact: run the same command to resume",
              file=sys.stderr)
        return EXIT_ABORTED


def _quiet_libraries() -> None:
    """Keep the console for multitune's own progress: no per-file progress bars from transformers, and
    no deprecation chatter between libraries that the user cannot act on."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="multitune", description="Multi-task fine-tuning of chat models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train, evaluate and save a run described by a YAML config")
    t.add_argument("config", help="path of the run's YAML config")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override config keys, e.g. train.learning_rate=1e-4 tasks.claims.weight=2")
    t.add_argument("--force", action="store_true",
                   help="resume from output_dir's checkpoint even if the config or data changed")
    t.set_defaults(func=_train)

    pr = sub.add_parser("predict", help="batch inference with a trained run on rows in a task's format")
    pr.add_argument("run_dir", help="a run's output_dir (holds config.yaml and adapter/)")
    pr.add_argument("--input", required=True, help="rows to predict: csv, tsv, jsonl, json or parquet")
    pr.add_argument("--output", required=True, help="where to write predictions (.jsonl)")
    pr.add_argument("--task", help="which task's format and answers to use (default: the run's only task)")
    pr.add_argument("--max-new-tokens", type=int, default=128, help="for open-ended tasks")
    pr.set_defaults(func=_predict)

    d = sub.add_parser("doctor", help="versions, GPUs, and (under a launcher) a timed all-reduce across processes")
    d.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the other processes")
    d.set_defaults(func=_doctor)

    d = sub.add_parser("data", help="inspect the data a run would train on")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    pv = dsub.add_parser("preview", help="print rendered examples with the trained tokens marked, and the "
                                         "per-task statistics")
    pv.add_argument("config", help="path of the run's YAML config")
    pv.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, as for train")
    pv.add_argument("--task", help="preview this task only (default: every task)")
    pv.add_argument("-n", type=int, default=3, help="examples per task (default: 3)")
    pv.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                    help="mark trained tokens in colour (auto: when printing to a terminal)")
    pv.set_defaults(func=_data_preview)

    e = sub.add_parser("eval", help="evaluate a run's model (or its base, or a merged model) on any task config")
    e.add_argument("run_dir", help="a run's output_dir, or a merged model's folder (with --config)")
    e.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override keys of the run's config, e.g. eval.max_rows=500 tasks.banking77.source=test.csv")
    e.add_argument("--config", help="take tasks and eval settings from this YAML instead of RUN_DIR/config.yaml")
    e.add_argument("--model", choices=["trained", "base"], default="trained",
                   help="trained: the run's adapter or weights (default); base: the base model alone")
    e.add_argument("--rows", choices=["val", "all"], default="val",
                   help="val: each task's seeded validation split (default); all: every row of its source")
    e.add_argument("--output-dir", help="where to write metrics.json and predictions (default RUN_DIR/eval)")
    e.set_defaults(func=_eval)
    return p


def _train(args: argparse.Namespace) -> int:
    from multitune import config
    from multitune.train.recipe import run

    run(config.load(args.config, args.overrides), force=args.force)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from multitune.doctor import run

    return run(args.timeout)


def _predict(args: argparse.Namespace) -> int:
    from multitune.predict import predict_file

    n = predict_file(args.run_dir, args.input, args.output, task=args.task, max_new_tokens=args.max_new_tokens)
    print(f"wrote {n} predictions to {args.output}")
    return 0


def _data_preview(args: argparse.Namespace) -> int:
    from multitune import config
    from multitune.data.preview import preview

    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(preview(config.load(args.config, args.overrides), task=args.task, n=args.n, color=color))

def _eval(args: argparse.Namespace) -> int:
    from multitune.eval.command import run_eval
    from multitune.report.table import before_after

    done = run_eval(args.run_dir, args.overrides, config_path=args.config, which=args.model, rows=args.rows,
                    output_dir=args.output_dir)
    print(before_after(done.summary.before, done.summary.after))
    print(f"\nmetrics: {done.eval_dir / 'metrics.json'}\npredictions: {done.eval_dir}/<task>/predictions.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
