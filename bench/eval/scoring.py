"""Evaluation benchmark: scoring versus generating-and-parsing, and evaluation memory against set size.

    python -m bench.eval.scoring                      # both datasets, 1,000 rows, memory at 500 and 5,000 rows
    python -m bench.eval.scoring --rows 200 --memory-rows 100 1000 --train-steps 100   # a quicker look

For banking77 and commonsense_qa (from ../shared/data), a tiny model is fine-tuned (full, a few hundred
steps, so it answers in the task's format) or taken from a finished run (`--banking77-run`), then on the
first `--rows` validation rows:
- scoring: every candidate's log-likelihood (exact search for banking77's 77 labels, one tree pass for
  the 5 letters), the prediction and the validation loss; also the full tree of all 77 labels;
- generation: greedy answers in batches (stopping at the end of turn, at most the longest label + 8
  tokens), parsed into a label or a letter;
- prompt pass: one forward pass over the whole prompts, keeping the last position's logits only: what
  generation pays before its first new token, and the yardstick for both;
- suffix pass: the same without the prefix all prompts share (and without attending to it): less than
  any exact scoring can compute, since every prompt token after that prefix feeds the answer's
  likelihood.
Each method runs once to warm up, then `--repeats` rounds take every method in turn; the median time
is reported (all of them are in the JSON). Examples per second and accuracy of each.

Memory: peak resident memory of evaluating 500 and 5,000 rows of banking77 (scoring and loss), each in
a fresh process, measured from the kernel's high-water mark reset just before evaluation.

Writes a JSON file (`--out`) and prints a markdown table. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, child_env

DATA = REPO.parent / "shared" / "data"
TASKS = {
    "banking77": {"name": "banking77", "kind": "classification", "source": str(DATA / "banking77" / "train.parquet"),
                  "system_prompt": ""},
    "commonsense_qa": {"name": "commonsense_qa", "kind": "multiple_choice",
                       "source": str(DATA / "commonsense_qa" / "train.jsonl")},
}


def run_config(task: str, out: Path, steps: int) -> dict:
    return {
        "output_dir": str(out), "seed": 0, "model": {"name": "tiny"}, "adapter": {"method": "full"},
        "tasks": [TASKS[task]], "data": {"max_seq_len": 192},
        "train": {"max_steps": steps, "learning_rate": 2e-3, "micro_batch_size": 32},
        "eval": {"baseline": False, "generate": "never", "max_rows": 16}, "logging": {"every_steps": 50},
    }


def trained_run(task: str, steps: int, work: Path, given: str | None, make_config=None) -> Path:
    """A finished run of `task`: the one given, or a short run of `make_config(task, out, steps)` (by
    default `run_config`: full fine-tuning of the tiny model), reused when its folder holds an adapter."""
    if given:
        return Path(given)
    from multitune.config import validate
    from multitune.recipes.train import run

    out = work / f"{task}-{steps}"
    if not (out / "adapter").is_dir():
        run(validate((make_config or run_config)(task, out, steps)))
    return out


def load(run_dir: Path):
    from multitune.config import load as load_config
    from multitune.data.prepare import load_splits
    from multitune.eval.runner import build_eval_sets
    from multitune.models import load as models

    cfg = load_config(run_dir / "config.yaml")
    tokenizer = models.load_tokenizer(str(run_dir / "adapter"), cfg.model)
    model = models.load_model(str(run_dir / "adapter"), cfg.model).eval()
    sets = build_eval_sets(tokenizer, load_splits(cfg), cfg.data.max_seq_len, cfg.data.truncation)
    return cfg, model, tokenizer, sets


def speed(run_dir: Path, rows: int, repeats: int) -> dict:
    """Scoring (search and full tree), generation+parsing and a bare prompt pass on the first `rows`
    validation rows: each method once to warm up, then `repeats` rounds taking every method in turn (so
    a slow spell of the shared machine hits all of them); the median of each is reported."""
    import statistics

    import torch

    from multitune.eval.records import score_items
    from multitune.eval.runner import evaluate, spread
    from multitune.eval.scoring import prefix_cache, shared_prefix_len
    from multitune.models import load as models

    cfg, model, tokenizer, sets = load(run_dir)
    es = sets[0]
    items = spread(es.items, rows)  # the rows evaluate() takes with eval.max_rows = rows
    assert len(items) == rows, f"only {len(items)} validation rows"
    eval_cfg = cfg.eval.model_copy(update={"max_rows": rows, "micro_batch_size": 16})
    pad = models.pad_id(tokenizer)
    prompts = [it.prompt for it in items]
    n = shared_prefix_len(prompts)
    out: dict = {"task": es.name, "rows": rows, "threads": torch.get_num_threads(), "repeats": repeats,
                 "prompt_tokens": sum(map(len, prompts)) / rows, "shared_prefix_tokens": n}
    def scoring() -> None:
        out["scoring_accuracy"] = evaluate(model, tokenizer, [es], eval_cfg, pad, generate=False)[es.name].metrics["accuracy"]

    def full_tree() -> None:
        for _ in score_items(model, items, [it.trie for it in items], 16, prefix_cache(model, prompts[0][:n]), n,
                             every_candidate=True):
            pass

    def generation() -> None:
        out["generation_accuracy"], out["generation_invalid_rate"] = greedy_parsed(model, tokenizer, es.kind, items, pad)

    def prompt_pass() -> None:
        prompt_forward(model, prompts, 16, pad)

    def suffix_pass() -> None:
        prompt_forward(model, [p[n:] for p in prompts], 16, pad)

    methods = {"scoring": scoring, "full_tree": full_tree, "generation": generation, "prompt_pass": prompt_pass,
               "suffix_pass": suffix_pass}
    times: dict[str, list[float]] = {key: [] for key in methods}
    for round_ in range(repeats + 1):
        for key, method in methods.items():
            start = time.perf_counter()
            method()
            if round_:  # round 0 warms up
                times[key].append(time.perf_counter() - start)
    for key, seconds in times.items():
        out[f"{key}_s"] = statistics.median(seconds)
        out[f"{key}_all_s"] = seconds
        out[f"{key}_examples_per_s"] = rows / out[f"{key}_s"]
    out["generation_over_scoring"] = out["generation_s"] / out["scoring_s"]
    return out


def greedy_parsed(model, tokenizer, kind: str, items, pad_id: int, batch_size: int = 16) -> tuple[float, float]:
    """Greedy answers to closed-answer `items` as the evaluation generates them (stopping at the end of
    turn, at most the longest candidate + CLOSED_GENERATION_SLACK tokens), parsed into a label or a
    letter: (accuracy, rate of answers that name no valid candidate)."""
    from multitune.eval.generate import greedy
    from multitune.eval.metrics import parse_choice, parse_label
    from multitune.eval.records import CLOSED_GENERATION_SLACK

    parse = parse_label if kind == "classification" else parse_choice
    longest = max(len(c) for it in items for c in it.trie.candidates)
    answers = greedy(model, tokenizer, [it.prompt for it in items], longest + CLOSED_GENERATION_SLACK, batch_size, pad_id)
    parsed = [parse(a, it.example.candidates) for a, it in zip(answers, items, strict=True)]
    correct = sum(p == it.example.label for p, it in zip(parsed, items, strict=True))
    return correct / len(items), sum(p is None for p in parsed) / len(items)


def prompt_forward(model, prompts, batch_size: int, pad_id: int) -> None:
    """One forward pass over every whole prompt (left-padded batches sorted by length, next-token logits
    of the last position only): what any evaluation that reads the prompts pays at the least, and
    what generation pays before its first new token."""
    import torch

    from multitune.eval.generate import left_pad

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            ids, mask = left_pad([prompts[i] for i in order[start : start + batch_size]], pad_id)
            model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)


def memory_child(run_dir: str, rows: int) -> dict:
    """In a fresh process: peak resident memory while evaluating the first `rows` rows of banking77."""
    from multitune import tasks
    from multitune.config import load as load_config
    from multitune.data.sources import load_rows
    from multitune.eval.items import build_eval_set
    from multitune.eval.runner import evaluate
    from multitune.models import load as models

    cfg = load_config(Path(run_dir) / "config.yaml")
    task = cfg.tasks[0]
    tokenizer = models.load_tokenizer(str(Path(run_dir) / "adapter"), cfg.model)
    model = models.load_model(str(Path(run_dir) / "adapter"), cfg.model).eval()
    examples = tasks.examples(task, load_rows(task))[:rows]  # every row of the source, not only the 20%
    es = build_eval_set(tokenizer, task.name, task.kind, examples, 0, cfg.data.max_seq_len, cfg.data.truncation,
                        list(examples[0].candidates or ()))
    eval_cfg = cfg.eval.model_copy(update={"max_rows": None, "micro_batch_size": 16})
    before = _rss_kib()
    Path("/proc/self/clear_refs").write_text("5")  # reset the kernel's peak-RSS mark (VmHWM) to now
    start = time.perf_counter()
    result = evaluate(model, tokenizer, [es], eval_cfg, models.pad_id(tokenizer), generate=False)[task.name]
    return {"rows": rows, "seconds": time.perf_counter() - start, "rss_before_mib": before / 1024,
            "peak_mib": _status("VmHWM") / 1024, "evaluated": result.metrics["rows"]}


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _rss_kib() -> int:
    return _status("VmRSS")


def memory(run_dir: Path, rows: int) -> dict:
    # a fresh process, so its peak memory is this set's alone; `-c` puts its cwd (the repository) on the path
    code = f"import json; from bench.eval import scoring as b; print(json.dumps(b.memory_child({str(run_dir)!r}, {rows})))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(), capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--memory-rows", type=int, nargs="*", default=[500, 5000])
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per method after a warm-up round (median)")
    p.add_argument("--train-steps", type=int, default=300, help="fine-tuning steps of the tiny model per dataset")
    p.add_argument("--banking77-run", help="a finished banking77 run to evaluate instead of training one")
    p.add_argument("--work", default=str(REPO / "runs" / "bench-eval"), help="where the short runs go")
    p.add_argument("--out", default=str(REPO / "runs" / "bench-eval" / "results.json"))
    args = p.parse_args()
    work = Path(args.work)
    results: dict = {"speed": [], "memory": []}
    for task in ("banking77", "commonsense_qa"):
        run_dir = trained_run(task, args.train_steps, work, args.banking77_run if task == "banking77" else None)
        results["speed"].append({**speed(run_dir, args.rows, args.repeats), "run": str(run_dir)})
        print(json.dumps(results["speed"][-1]), flush=True)
        if task == "banking77":
            for rows in args.memory_rows:
                results["memory"].append(memory(run_dir, rows))
                print(json.dumps(results["memory"][-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(table(results))


def table(results: dict) -> str:
    lines = ["| task | rows | scoring ex/s | scoring acc | full tree ex/s | generation ex/s | generation acc | "
             "invalid | prompt pass ex/s | suffix pass ex/s | generation / scoring time |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["speed"]:
        lines.append(f"| {r['task']} | {r['rows']} | {r['scoring_examples_per_s']:.1f} | {r['scoring_accuracy']:.3f} | "
                     f"{r['full_tree_examples_per_s']:.1f} | {r['generation_examples_per_s']:.1f} | "
                     f"{r['generation_accuracy']:.3f} | {r['generation_invalid_rate']:.3f} | "
                     f"{r['prompt_pass_examples_per_s']:.1f} | {r['suffix_pass_examples_per_s']:.1f} | "
                     f"{r['generation_over_scoring']:.2f}x |")
    lines += ["", "| rows evaluated | seconds | RSS before (MiB) | peak RSS during evaluation (MiB) |", "|---|---|---|---|"]
    for m in results["memory"]:
        lines.append(f"| {m['rows']} | {m['seconds']:.1f} | {m['rss_before_mib']:.0f} | {m['peak_mib']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
