"""Per-task evaluation: every task's validation loss and the metrics its kind deserves.

How accuracy is computed, from here to the line that computes it (closed tasks: classification and
multiple choice, DESIGN.md #9):

1. `evaluate` takes each task's evaluation set (`build_eval_sets`: the prompts tokenised as in training,
   each row's candidate answers as a `CandidateTrie`), shards its rows and calls
   `eval/records.closed_records` on this process's shard.
2. `closed_records` asks `score_items` for every row's candidate scores: `eval/search.score_rows` runs the
   prompts in packed passes (`eval/pool.drive`; the prompts' shared prefix once, `eval/scoring.
   shared_prefix_len`), feeding candidate-tree nodes (the exact best-first search, or the whole tree);
   `eval/search._read` takes each fed position's next-token log-probabilities (`eval/pool.logprobs_at`) and
   `_Scoring.learn` adds them up along the tree: a completed candidate's sum is its log-likelihood,
   `log P(candidate | prompt)`, end-of-turn token included; `_Scoring.scores` returns them as `Scores`.
3. `eval/records._closed_record` turns a row's scores into its record: the prediction is
   `torch.argmax` of the scores (divided by the answer's tokens with `eval.length_normalized`; the first
   of equal maxima), `correct` is whether it is the gold candidate, and `gold_score` the gold answer's
   log-likelihood.
4. `gather_records` brings every process's records together, in evaluation-set order, and
   `eval/metrics.task_metrics` computes the task's metrics from them: `accuracy` is
   `eval/metrics.classification_metrics`'s `accuracy_score(gold, predicted)` (scikit-learn) over the
   records' gold labels and predictions; the validation `loss` is minus the summed `gold_score` over the
   gold answers' tokens.

Beside it, on the same records: `gen_accuracy` (what a chat user sees) from greedy answers
(`eval/records._add_closed_generations` -> `eval/generate.greedy`, parsed by `parse_label` /
`parse_choice`) in `eval/metrics.generation_metrics`; `choice_acc` / `choice_acc_norm` from the choice
texts' scores in `eval/metrics.choice_accuracy`. Open tasks (`eval/records.open_records`) have a reference
loss (`reference_losses`) and ROUGE, BLEU and chrF (`eval/metrics.text_metrics`) instead.

Rows are sharded across processes (item i goes to process i % world_size); each process evaluates its
shard into per-row records, the records are gathered, and every process computes the same metrics from
all of them. Each row is counted exactly once whatever the number of processes (the gather checks it),
and nothing larger than a record is kept per row.

Invariant: every process runs the same sequence of forward passes, because under FSDP each pass is a set
of all-gathers all processes must join (`eval/lockstep.py` has the rules). Shards are padded to equal
length with copies of a row whose records are dropped; scoring batches, search rounds and generation
steps are agreed across processes. A change here that lets one process run a pass the others do not
hangs every FSDP run: tests/train/test_fsdp.py runs one under a timeout.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from multitune.config.schema import EvalConfig
from multitune.data.prepare import TaskSplit
from multitune.data.tokenize import prompt_ids
from multitune.eval.items import EvalItem, EvalSet, build_eval_set
from multitune.eval.lockstep import Lockstep
from multitune.eval.metrics import task_metrics
from multitune.eval.pool import Work
from multitune.eval.records import closed_records, open_records, score_items
from multitune.eval.scoring import CandidateTrie
from multitune.tasks.base import Example


@dataclass
class TaskResult:
    metrics: dict[str, float]  # flat: what metrics.json, the trackers and the tables show
    predictions: list[dict[str, Any]]  # one record per evaluated row, in evaluation-set order
    details: dict[str, Any] = field(default_factory=dict)  # per-class scores and confusion (classification)
    of_rows: int = 0  # rows of the task's evaluation set; `predictions` holds `metrics["rows"]` of them
    seconds: float = 0.0  # this process's time on the task, generation included
    work: Work = field(default_factory=Work)  # this process's passes (`eval/pool.py`)


def build_eval_sets(tokenizer: Any, splits: Sequence[TaskSplit], max_seq_len: int, truncation: str) -> list[EvalSet]:
    """Each task's validation split, tokenised once for all the run's evaluations."""
    return [
        build_eval_set(tokenizer, s.cfg.name, s.cfg.kind, s.val, task_id, max_seq_len, truncation, s.labels)
        for task_id, s in enumerate(splits)
    ]


def evaluate(
    model: Any, tokenizer: Any, eval_sets: Sequence[EvalSet], cfg: EvalConfig, pad_id: int, *,
    generate: bool, rank: int = 0, world_size: int = 1,
) -> dict[str, TaskResult]:
    """Evaluate every task on `cfg.max_rows` of its rows. `generate` adds the generation-based metrics (on
    `cfg.generate_max_rows` of those). Returns task name -> result, the same on every process."""
    was_training = model.training
    model.eval()
    step = Lockstep(rank, world_size, next(model.parameters()).device)
    results = {}
    for es in eval_sets:
        started, work = time.perf_counter(), Work()
        items = spread(es.items, cfg.max_rows)
        mine, real = step.shard(items)
        chosen = {it.index for it in spread(items, cfg.generate_max_rows)} if generate else set()
        if es.closed:
            records = closed_records(model, tokenizer, es, mine, cfg, pad_id, chosen, step, work)
        else:
            records = open_records(model, tokenizer, mine, cfg, pad_id, chosen, step, work)
        records = gather_records(records[:real], world_size, [it.index for it in items])
        metrics, details = task_metrics(es.kind, records, es.labels)
        results[es.name] = TaskResult(metrics, records, details, len(es.items), time.perf_counter() - started, work)
    model.train(was_training)
    return results


def closing_line(what: str, results: dict[str, TaskResult], rows_of: str = "validation rows") -> str:
    """The line that closes an evaluation: per task, the rows it covered of how many, its speed and its
    primary metric.

    >>> r = TaskResult({"rows": 200.0, "accuracy": 0.865}, [], of_rows=1998, seconds=12.5)
    >>> closing_line("step 500", {"banking77": r})
    'evaluation at step 500: banking77 200 of 1,998 validation rows in 12.5 s (16.0 rows/s), accuracy 0.8650'
    """
    parts = []
    for name, r in results.items():
        rows = int(r.metrics.get("rows", 0))
        metric = "accuracy" if "accuracy" in r.metrics else "rougeL" if "rougeL" in r.metrics else "loss"
        value = f", {metric} {r.metrics[metric]:.4f}" if metric in r.metrics else ""
        generated = f", {int(r.metrics['gen_rows'])} generated" if r.metrics.get("gen_rows") else ""
        parts.append(f"{name} {rows:,} of {r.of_rows:,} {rows_of} in {r.seconds:.1f} s "
                     f"({rows / max(r.seconds, 1e-9):.1f} rows/s{generated}){value}")
    return f"evaluation at {what}: " + "; ".join(parts)


def spread(items: Sequence[EvalItem], k: int | None) -> list[EvalItem]:
    """At most `k` items spread evenly over `items` (all of them for None). Sources are often sorted by
    label (banking77 is), so the first k rows would hold a few classes only.

    >>> [it for it in spread(list(range(10)), 4)]
    [0, 2, 5, 7]
    """
    n = len(items)
    return list(items) if k is None or k >= n else [items[i * n // k] for i in range(k)]


def baseline_config(cfg: EvalConfig) -> EvalConfig:
    """The settings of the baseline evaluation: `max_rows` lowered to `baseline_max_rows` when that is
    smaller, so the baseline's rows are the first `spread` would pick for that count."""
    caps = [k for k in (cfg.max_rows, cfg.baseline_max_rows) if k is not None]
    return cfg.model_copy(update={"max_rows": min(caps) if caps else None})


def baseline_notice(eval_sets: Sequence[EvalSet], cfg: EvalConfig) -> str | None:
    """The line to say before a baseline that evaluates fewer rows than the other evaluations; None when
    it evaluates the same rows.

    >>> from multitune.config.schema import EvalConfig
    >>> sets = [EvalSet("banking77", "classification", list(range(1998)), None, 0)]  # items stand in as numbers
    >>> baseline_notice(sets, EvalConfig())
    'baseline: banking77 on 200 of 1,998 validation rows, spread evenly (eval.baseline_max_rows: null evaluates all)'
    >>> baseline_notice(sets, EvalConfig(max_rows=150)) is None
    True
    """
    cap = baseline_config(cfg).max_rows
    parts = [f"{es.name} on {cap:,} of {len(es.items):,} validation rows" for es in eval_sets
             if cap is not None and cap < len(spread(es.items, cfg.max_rows))]
    if not parts:
        return None
    same = "all" if cfg.max_rows is None else f"the {cfg.max_rows:,} of eval.max_rows"
    return f"baseline: {', '.join(parts)}, spread evenly (eval.baseline_max_rows: null evaluates {same})"


def gather_records(records: list[dict[str, Any]], world_size: int, expected: Sequence[int]) -> list[dict[str, Any]]:
    """All processes' records in evaluation-set order; fails loudly if a row is missing or repeated."""
    if world_size > 1:
        from accelerate.utils import gather_object

        records = list(gather_object(records))
    records = sorted(records, key=lambda r: r["index"])
    if [r["index"] for r in records] != list(expected):
        raise RuntimeError(f"evaluation gathered rows {[r['index'] for r in records][:20]}..., "
                           f"expected {list(expected)[:20]}...")
    return records


def score_examples(model: Any, tokenizer: Any, examples: Sequence[Example], tokens_per_pass: int = 512) -> list[dict[str, Any]]:
    """Pick each example's most likely candidate (unlabelled rows too). One record per example: row, gold
    (None when unlabelled), prediction, correct, score (the prediction's log-likelihood)."""
    tries: dict[tuple[str, ...], CandidateTrie] = {}
    items = []
    for i, ex in enumerate(examples):
        assert ex.candidates is not None
        if ex.candidates not in tries:
            from multitune.data.tokenize import answer_ids

            tries[ex.candidates] = CandidateTrie.build([answer_ids(tokenizer, ex.prompt, c) for c in ex.candidates])
        gold = ex.candidates.index(ex.label) if ex.label in ex.candidates else None
        items.append(EvalItem(i, ex, None, prompt_ids(tokenizer, ex.prompt), tries[ex.candidates], gold))  # type: ignore[arg-type]
    out: list[dict[str, Any]] = [{} for _ in items]
    for k, s in score_items(model, items, [it.trie for it in items], tokens_per_pass, every_candidate=False):
        ex = items[k].example
        best = int(s.logprobs.argmax())
        prediction = ex.candidates[best]  # type: ignore[index]
        out[k] = {"row": ex.row, "gold": ex.label, "prediction": prediction,
                  "correct": ex.label is not None and prediction == ex.label, "score": float(s.logprobs[best])}
    return out
