"""The `multitune` command line. Thin: it parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from multitune.errors import EXIT_ABORTED, EXIT_PREEMPTED, EXIT_USER_ERROR, UserError


def main(argv: Sequence[str] | None = None) -> int:
    from multitune.runtime import passive_openmp

    passive_openmp()  # before torch loads the OpenMP runtime
    parser = _parser()
    # Overrides may follow options (`eval RUN --rows all k=v`), which argparse alone leaves unparsed.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\naborted; the last complete checkpoint (if any) is intact: run the same command to resume",
              file=sys.stderr)
        return EXIT_ABORTED


def _quiet_libraries() -> None:
    """Keep the console for multitune's own progress: no per-file progress bars from transformers.
    Warnings are not silenced: their causes are fixed, so a new one is seen."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


class Parser(argparse.ArgumentParser):
    """argparse, with its errors in the house style of every other error (`error: ...` and a fix) and the
    same exit status (2), instead of the usage text followed by the message."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {message}\n  fix: `{self.prog} --help` lists the options\n")


@dataclass(frozen=True)
class Number:
    """The `type` of every numeric option: a whole or real number within its range, checked while the
    command line is parsed, so that `--mfu 1.5` or `--price -3` is refused before anything runs, in one
    message style: `error: argument --mfu: 1.5 is out of range: it must be above 0 and at most 1 (...)`."""

    kind: type[int] | type[float]
    low: float | None = None
    high: float | None = None
    above: bool = False
    """The range excludes `low` (a share of the peak must be above 0)."""
    meaning: str = ""

    def __call__(self, text: str) -> int | float:
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole number' if self.kind is int else 'a number'}") from None
        too_low = self.low is not None and (value < self.low or (self.above and value == self.low))
        too_high = self.high is not None and value > self.high
        if not math.isfinite(value) or too_low or too_high:
            meaning = f" ({self.meaning})" if self.meaning else ""
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {self.range()}{meaning}")
        return value

    def range(self) -> str:
        if self.low is not None and self.high is not None and not self.above:
            return f"from {self.low:g} to {self.high:g}"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'above' if self.above else 'at least'} {self.low:g}")
        if self.high is not None:
            bounds.append(f"at most {self.high:g}")
        return " and ".join(bounds) or "a finite number"


COUNT = Number(int, 1)  # a positive whole number: tokens, examples, GPUs
TOKENS = Number(int, 1, meaning="tokens to generate")


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="multitune", description="Multi-task fine-tuning of chat models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train, evaluate and save a run described by a YAML config")
    t.add_argument("config", help="path of the run's YAML config")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override config keys, e.g. train.learning_rate=1e-4 tasks.claims.weight=2")
    t.add_argument("--force", action="store_true",
                   help="resume from output_dir's checkpoint even if the config or data changed")
    t.set_defaults(func=_train)

    _sweep_command(sub)

    pr = sub.add_parser("predict", help="batch inference with a trained run on rows in a task's format")
    pr.add_argument("run_dir", help="a run's output_dir (holds config.yaml and adapter/)")
    pr.add_argument("--input", required=True, help="rows to predict: csv, tsv, jsonl, json or parquet")
    pr.add_argument("--output", required=True, help="where to write predictions (.jsonl)")
    pr.add_argument("--task", help="which task's format and answers to use (default: the run's only task)")
    pr.add_argument("--max-new-tokens", type=TOKENS, default=128, help="for open-ended tasks")
    pr.set_defaults(func=_predict)

    d = sub.add_parser("doctor", help="versions, GPUs, and (under a launcher) a timed all-reduce across processes")
    d.add_argument("--timeout", type=Number(float, 0, above=True), default=60.0,
                   help="seconds to wait for the other processes")
    d.set_defaults(func=_doctor)

    d = sub.add_parser("data", help="inspect the data a run would train on")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    pv = dsub.add_parser("preview", help="print rendered examples with the trained tokens marked, and the "
                                         "per-task statistics")
    pv.add_argument("config", help="path of the run's YAML config")
    pv.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, as for train")
    pv.add_argument("--task", help="preview this task only (default: every task)")
    pv.add_argument("-n", type=COUNT, default=3, help="examples per task (default: 3)")
    pv.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                    help="mark trained tokens in colour (auto: when printing to a terminal)")
    pv.set_defaults(func=_data_preview)

    _plan_command(sub)

    e = sub.add_parser("eval", help="evaluate a run's model (or its base, or a merged model) on any task config")
    e.add_argument("run_dir", help="a run's output_dir, or a merged model's folder (with --config)")
    e.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override keys of the run's config, e.g. eval.max_rows=500 tasks.banking77.source=test.csv")
    e.add_argument("--config", help="take tasks and eval settings from this YAML instead of RUN_DIR/config.yaml")
    e.add_argument("--model", choices=["trained", "base"], default="trained",
                   help="trained: the run's adapter or weights (default); base: the base model alone")
    e.add_argument("--rows", choices=["val", "all"], default="val",
                   help="val: each task's seeded validation split, eval.max_rows of it as the run evaluated "
                        "(default); all: every row of its source (eval.max_rows does not apply unless set here)")
    e.add_argument("--output-dir", help="where to write metrics.json and predictions (default RUN_DIR/eval)")
    e.set_defaults(func=_eval)

    _shipping_commands(sub)
    return p


def _sweep_command(sub: argparse._SubParsersAction) -> None:
    sw = sub.add_parser("sweep", help="a grid of runs over config keys, one after another, then one table and plot")
    sw.add_argument("config", help="path of the runs' YAML config")
    sw.add_argument("overrides", nargs="+", metavar="KEY=V1,V2",
                    help="the grid: each key with its values, e.g. adapter.method=lora,ia3 train.learning_rate=1e-4,3e-4 "
                         "(a key with one value is set for every run)")
    sw.add_argument("--output-dir", help="the sweep folder, holding one run folder per grid point "
                                         "(default: the config's output_dir + '-sweep')")
    sw.add_argument("--shard", default="1/1", metavar="K/N",
                    help="run only every N-th run of the grid, from the K-th (to spread a sweep over N machines)")
    sw.add_argument("--zip", action="append", default=[], metavar="KEY,KEY",
                    help="keys whose values advance together instead of crossing, e.g. --zip "
                         "adapter.method,train.learning_rate for a learning rate per method (repeatable)")
    sw.add_argument("--report-only", action="store_true",
                    help="train nothing: rebuild the table and report from the run folders that exist")
    sw.set_defaults(func=_sweep)


def _plan_command(sub: argparse._SubParsersAction) -> None:
    pl = sub.add_parser("plan", help="memory, time and cost of a run before renting GPUs (--measure: checked here)")
    pl.add_argument("config", help="path of the run's YAML config")
    pl.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, as for train")
    pl.add_argument("--gpu", help="a GPU of the table (--gpu list shows it), or its numbers: 80GB,312TF "
                                  "(default: this machine)")
    pl.add_argument("--gpu-memory", type=Number(float, 0, above=True, meaning="GiB per GPU, e.g. 80"),
                    help="GPU memory in GiB (instead of a name)")
    pl.add_argument("--gpu-tflops", type=Number(float, 0, above=True, meaning="dense bf16 TFLOPS per GPU, e.g. 312"),
                    help="dense bf16 TFLOPS per GPU (instead of a name)")
    pl.add_argument("--gpus", type=COUNT, default=1, help="GPUs in all: FSDP shards over them (default 1)")
    pl.add_argument("--nodes", type=COUNT, default=1,
                    help="machines the GPUs are on: compares FSDP, HSDP and DDP by what crosses between them")
    pl.add_argument("--price", type=Number(float, 0, meaning="price of one GPU-hour, e.g. 2.5"),
                    help="price per GPU-hour, for the cost")
    pl.add_argument("--mfu", type=Number(float, 0, 1, above=True, meaning="the share of the GPU's peak FLOPs that "
                                         "training reaches, e.g. 0.4; 1 is the hardware's peak"),
                    help="assumed model FLOPs utilisation (default by method, stated)")
    pl.add_argument("--measure", type=Number(int, 0, meaning="training steps to run here"), default=0, metavar="N",
                    help="also run N real training steps here")
    pl.add_argument("--output", help="where to write plan.json (default: the run's output_dir)")
    pl.set_defaults(func=_plan)


def _shipping_commands(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("merge", help="merge a run's adapter into its base: one plain transformers model")
    m.add_argument("run_dir", help="a run's output_dir")
    m.add_argument("--output", required=True, help="folder for the merged model (new or empty)")
    m.add_argument("--dtype", default="auto", choices=["auto", "float32", "bf16", "bfloat16", "fp16", "float16"],
                   help="auto: the base's stored 16-bit dtype (float32 for a float32 base; 16-bit for QLoRA)")
    m.add_argument("--device", default="cpu", help="where to merge and check: cpu (default) or cuda")
    m.set_defaults(func=_merge)

    x = sub.add_parser("export", help="a run in a serving format: merged GGUF, LoRA adapter GGUF, or vLLM adapter")
    x.add_argument("run_dir", help="a run's output_dir")
    x.add_argument("--format", required=True, choices=["gguf", "gguf-lora", "vllm"],
                   help="gguf: the merged model for llama.cpp / Ollama (Llama models); gguf-lora: the LoRA adapter "
                        "alone for llama.cpp --lora / Ollama ADAPTER; vllm: the adapter folder for vllm serve --lora-modules")
    x.add_argument("--output", required=True, help="the GGUF file to write (new; a Modelfile goes beside it), or "
                                                   "the folder for --format vllm")
    x.add_argument("--type", default="f16", choices=["f16", "bf16", "q8_0", "f32"],
                   help="gguf: f16 (default), bf16 or q8_0 (8-bit, about half the size); gguf-lora: f16 or f32")
    x.add_argument("--base-gguf", help="gguf-lora: the base GGUF the Modelfile names (default: the run's own GGUF "
                                       "base, else the base written beside the adapter in f16)")
    x.add_argument("--base", help="vllm: the model id or folder vllm serves the adapter on (for the command shown)")
    x.set_defaults(func=_export)

    pu = sub.add_parser("push", help="upload a run's adapter (or merged model) to the Hugging Face Hub with a model card")
    pu.add_argument("run_dir", help="a run's output_dir")
    pu.add_argument("--repo-id", help="OWNER/NAME of the model repository, created if missing "
                    "(default: hub.repo_id of the run's config)")
    pu.add_argument("--merged", action="store_true", default=None, help="merge first and upload the full model")
    pu.add_argument("--private", action="store_true", default=None, help="create the repository private")
    pu.add_argument("--gguf", nargs="?", const="f16", choices=["f16", "bf16", "q8_0"],
                    help="also upload the model as a GGUF file (default type f16) and an Ollama Modelfile")
    pu.set_defaults(func=_push)

    c = sub.add_parser("chat", help="chat with a trained run in the terminal")
    c.add_argument("run_dir", help="a run's output_dir")
    c.add_argument("--system", help="system prompt")
    _generation_args(c, max_new_tokens=256)
    c.set_defaults(func=_chat)

    se = sub.add_parser("serve", help="an OpenAI-compatible HTTP server for a trained run (for trials)")
    se.add_argument("run_dir", help="a run's output_dir")
    se.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines (set MULTITUNE_API_KEY)")
    se.add_argument("--port", type=Number(int, 0, 65535, meaning="a TCP port; 0 picks a free one"), default=8000,
                    help="0 picks a free port")
    se.add_argument("--model-name", help="the model id clients ask for (default: the run folder's name)")
    se.add_argument("--max-tokens", type=TOKENS, default=512, help="answer length when a request gives none")
    se.set_defaults(func=_serve)


def _generation_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    # The ranges of OpenAI's API, which `serve` accepts per request too (serve/protocol.py).
    p.add_argument("--max-new-tokens", type=TOKENS, default=max_new_tokens)
    p.add_argument("--temperature", type=Number(float, 0, 2, meaning="0 decodes greedily"), default=0.0,
                   help="0 (default) decodes greedily")
    p.add_argument("--top-p", type=Number(float, 0, 1, above=True, meaning="the share of probability mass sampled "
                                          "from"), default=1.0)
    p.add_argument("--seed", type=Number(int, 0), help="seed for sampled answers")


def _train(args: argparse.Namespace) -> int:
    from multitune import config
    from multitune.recipes.train import run

    result = run(config.load(args.config, args.overrides), force=args.force)
    return EXIT_PREEMPTED if result.stopped else 0


def _sweep(args: argparse.Namespace) -> int:
    from multitune.recipes.sweep import sweep

    k, _, n = args.shard.partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise UserError(f"--shard {args.shard} is not K/N with 1 <= K <= N", fix="e.g. --shard 2/3 on the second of 3 machines")
    zipped = [[key.strip() for key in group.split(",") if key.strip()] for group in args.zip]
    r = sweep(args.config, args.overrides, args.output_dir, (int(k), int(n)), args.report_only, zipped)
    if r.skipped:
        print(f"\nalready finished, kept: {', '.join(r.skipped)}")
    print(f"\n{r.table}\n\nsweep: {r.sweep_dir / 'sweep.json'}\nreport: {r.report}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from multitune import config
    from multitune.plan.gpus import gpu_table
    from multitune.plan.render import render
    from multitune.plan.target import choose_target
    from multitune.recipes.plan import run_plan

    if args.gpu == "list":
        print(gpu_table())
        return 0
    if args.gpus % args.nodes:
        raise UserError(f"--nodes {args.nodes} does not divide --gpus {args.gpus}",
                        fix="give the GPUs in all and the machines they are on, e.g. --gpus 12 --nodes 3")
    cfg = config.load(args.config, args.overrides)
    target = choose_target(args.gpu, args.gpu_memory, args.gpu_tflops, args.gpus, args.nodes)
    plan, path = run_plan(cfg, target, args.price, args.mfu, args.measure, args.output)
    print(render(plan))
    print(f"\nplan: {path}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from multitune.recipes.doctor import run

    return run(args.timeout)


def _predict(args: argparse.Namespace) -> int:
    from multitune.recipes.predict import predict_file

    n = predict_file(args.run_dir, args.input, args.output, task=args.task, max_new_tokens=args.max_new_tokens)
    print(f"wrote {n} predictions to {args.output}")
    return 0


def _data_preview(args: argparse.Namespace) -> int:
    from multitune import config
    from multitune.recipes.preview import preview

    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(preview(config.load(args.config, args.overrides), task=args.task, n=args.n, color=color))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from multitune.recipes.eval import run_eval
    from multitune.report.table import before_after

    done = run_eval(args.run_dir, args.overrides, config_path=args.config, which=args.model, rows=args.rows,
                    output_dir=args.output_dir)
    print(before_after(done.summary.before, done.summary.after, retention=done.summary.retention))
    print(f"\nmetrics: {done.eval_dir / 'metrics.json'}\npredictions: {done.eval_dir}/<task>/predictions.jsonl")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from multitune.export.merge import merge_run

    r = merge_run(args.run_dir, args.output, dtype=args.dtype, device=args.device)
    print(f"merged model ({str(r.dtype).removeprefix('torch.')}) written to {r.output_dir}")
    print(f"check against base + adapter on a few chat prompts: largest logit difference {r.max_abs_diff:.3g} "
          f"(tolerance {r.tolerance:.3g}), same top token at {r.top1_agreement:.1%} of positions")
    return 0


def _export(args: argparse.Namespace) -> int:
    allowed = {"gguf": ("f16", "bf16", "q8_0"), "gguf-lora": ("f16", "f32"), "vllm": ("f16",)}[args.format]
    if args.type not in allowed:
        raise UserError(f"--type {args.type} does not apply to --format {args.format}",
                        fix=f"use one of {', '.join(allowed)}" if len(allowed) > 1 else "leave --type out")
    if args.format == "vllm":
        return _export_vllm(args)
    if args.format == "gguf-lora":
        return _export_gguf_lora(args)
    from multitune.export.to_gguf import export_gguf

    r = export_gguf(args.run_dir, args.output, type=args.type)
    if r.merge is not None:
        print(f"merged: largest logit difference vs base + adapter {r.merge.max_abs_diff:.3g} "
              f"(tolerance {r.merge.tolerance:.3g})")
    print(f"wrote {r.gguf.path} ({args.type}, {r.gguf.tensor_count} tensors, "
          f"{r.gguf.path.stat().st_size / 2**20:.1f} MiB) and {r.modelfile_path}")
    print(f"run it: llama-cli -m {r.gguf.path} -cnv   or   cd {r.gguf.path.parent} && ollama create NAME -f Modelfile")
    return 0


def _export_gguf_lora(args: argparse.Namespace) -> int:
    from multitune.export.to_gguf import export_gguf_lora

    r = export_gguf_lora(args.run_dir, args.output, type=args.type, base_gguf=args.base_gguf)
    a = r.adapter
    if r.base_written is not None:
        print(f"wrote the base {r.base} (f16, {r.base_written.tensor_count} tensors)")
    print(f"wrote {a.path} (LoRA adapter, {args.type}, {a.pairs} weights of rank {a.rank}, alpha {a.alpha:g}, "
          f"{a.path.stat().st_size / 2**20:.1f} MiB) and {r.modelfile_path}")
    print(f"run it: llama-cli -m {r.base} --lora {a.path} -cnv   or   cd {a.path.parent} && ollama create NAME -f Modelfile")
    return 0


def _export_vllm(args: argparse.Namespace) -> int:
    from multitune.export.vllm import export_vllm

    r = export_vllm(args.run_dir, args.output, base=args.base)
    print(f"wrote {r.output_dir} (LoRA rank {r.rank}: vLLM's --max-lora-rank {r.max_lora_rank} or more serves it)")
    print(f"serve it: {r.command}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from multitune.export.hub import push_run

    r = push_run(args.run_dir, args.repo_id, merged=args.merged, private=args.private, gguf=args.gguf)
    if r.merge is not None:
        print(f"merged: largest logit difference vs base + adapter {r.merge.max_abs_diff:.3g} "
              f"(tolerance {r.merge.tolerance:.3g})")
    print(f"pushed {len(r.files)} files to {r.url}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from multitune.serve.chat import TerminalChat
    from multitune.serve.engine import ChatModel, GenerationSettings

    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    TerminalChat(ChatModel.from_run(args.run_dir), settings, args.system, sys.stdin, sys.stdout).run()
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os

    from multitune.serve.engine import ChatModel
    from multitune.serve.server import ChatServer

    api_key = os.environ.get("MULTITUNE_API_KEY") or None
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: {args.host} accepts other machines and MULTITUNE_API_KEY is not set: anyone who can "
              "reach this port can use the model", file=sys.stderr)
    model = ChatModel.from_run(args.run_dir, name=args.model_name)
    server = ChatServer((args.host, args.port), model, api_key=api_key, default_max_tokens=args.max_tokens)
    print(f"serving {args.run_dir} as model {model.name!r} at {server.url} "
          f"(POST /chat/completions, GET /models; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
