"""One process's shard of a task, evaluated row by row into small records (no logits are kept).

A record is one line of `eval/<task>/predictions.jsonl` (`report/results.py` documents the fields).
Closed tasks: one scoring pass per batch gives every candidate's log-likelihood, hence the prediction,
its score and, from the gold answer's log-likelihood, the validation loss. Open tasks: a loss pass on
the references. Both: greedy generation when asked, on `eval.generate_max_rows` rows spread over the set.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch

from multitune.config.schema import EvalConfig
from multitune.data.collate import model_inputs, pad_batch
from multitune.eval.generate import greedy
from multitune.eval.items import EvalItem, EvalSet, choice_text_tries
from multitune.eval.lockstep import SOLO, Lockstep
from multitune.eval.metrics import rouge_row
from multitune.eval.pool import Work
from multitune.eval.scoring import CandidateTrie, Scores
from multitune.eval.search import score_rows
from multitune.loss import per_example_loss
from multitune.tasks import ClosedKind

# Candidate trees up to this many nodes are scored in one pass; larger ones (77 banking labels: ~200
# nodes) by the exact best-first search, whose cost follows the winner's length instead.
SEARCH_FROM_NODES = 16
# Room a generated closed answer gets beyond the longest candidate ("The answer is B." is 5 tokens in
# Llama 3); a model that ends its turn after the label stops there anyway.
CLOSED_GENERATION_SLACK = 8


def closed_records(
    model: Any, tokenizer: Any, eval_set: EvalSet, items: Sequence[EvalItem], cfg: EvalConfig, pad_id: int, generate: set[int], step: Lockstep = SOLO, work: Work | None = None,
) -> list[dict[str, Any]]:
    """Score `items`, this process's rows of a classification or multiple-choice task, and generate for
    those whose index is in `generate`. With other processes (`step`), call with shards of equal length.
    `work` counts the passes (`eval/pool.py`)."""
    # Each row's scores become its record as soon as it is decided: a record is all that is kept.
    records: list[dict[str, Any]] = [{} for _ in items]
    for k, s in score_items(model, items, [it.trie for it in items], cfg.tokens_per_pass,
                            every_candidate=cfg.length_normalized, step=step, work=work):
        records[k] = _closed_record(items[k], s, cfg.length_normalized)
    if cfg.choice_texts and eval_set.spec.choice_texts and items:
        texts = score_items(model, items, choice_text_tries(tokenizer, items), cfg.tokens_per_pass,
                            every_candidate=True, step=step, work=work)
        for k, s in texts:
            it = items[k]
            records[k] |= {"choice_scores": [float(x) for x in s.logprobs], "gold_index": it.gold_index,
                           "choice_chars": [len(t) for t in it.example.choice_texts or ()]}
    if generate:
        _add_closed_generations(model, tokenizer, eval_set, items, records, cfg, pad_id, generate, step, work)
    return records


def score_items(
    model: Any, items: Sequence[EvalItem], tries: Sequence[CandidateTrie | None], tokens_per_pass: int, *,
    every_candidate: bool, step: Lockstep = SOLO, work: Work | None = None,
) -> Iterator[tuple[int, Scores]]:
    """(position in `items`, candidate scores) of every item, as each is decided (scores do not depend on
    the order or the passes). A caller that keeps something small per row instead of the scores keeps
    evaluation memory flat however many rows there are.

    `every_candidate`: every candidate's exact log-likelihood (the whole tree with the prompt); otherwise
    the winner's and the gold answer's are exact and a candidate proven to lose may be -inf
    (`eval/search.py`), for trees larger than SEARCH_FROM_NODES. With other processes (`step`, shards of
    equal length), the largest tree is agreed, so all take the same path.
    """
    assert all(t is not None for t in tries)
    largest = step.most(max((len(t) for t in tries), default=0))  # type: ignore[arg-type]
    every = every_candidate or largest <= SEARCH_FROM_NODES
    yield from score_rows(model, [it.prompt for it in items], tries, [it.gold_index for it in items],  # type: ignore[arg-type]
                          every_candidate=every, tokens_per_pass=tokens_per_pass, step=step, work=work)


def _closed_record(item: EvalItem, s: Scores, length_normalized: bool) -> dict[str, Any]:
    ex = item.example
    assert ex.candidates is not None
    values = s.logprobs / s.lengths if length_normalized else s.logprobs
    best = int(torch.argmax(values))  # the first of equal maxima
    gold = item.gold_index
    return {
        "row": ex.row, "index": item.index, "input": item.input, "gold": ex.label,
        "prediction": ex.candidates[best], "score": float(s.logprobs[best]), "correct": best == gold,
        "gold_score": None if gold is None else float(s.logprobs[gold]),
        "answer_tokens": None if gold is None else int(s.lengths[gold]),
    }


def _add_closed_generations(
    model: Any, tokenizer: Any, eval_set: EvalSet, items: Sequence[EvalItem], records: list[dict[str, Any]],
    cfg: EvalConfig, pad_id: int, generate: set[int], step: Lockstep, work: Work | None,
) -> None:
    chosen = [k for k, it in enumerate(items) if it.index in generate]
    # The longest candidate of the rows generated for on any process: the answers' room is the same
    # whatever the number of processes.
    longest = step.most(max((len(c) for k in chosen for c in items[k].trie.candidates), default=0))  # type: ignore[union-attr]
    answers = greedy(model, tokenizer, [items[k].prompt for k in chosen], longest + CLOSED_GENERATION_SLACK,
                     cfg.micro_batch_size, pad_id, step, cfg.tokens_per_pass, work)
    for k, text in zip(chosen, answers, strict=True):
        ex = items[k].example
        assert ex.candidates is not None
        parsed = cast(ClosedKind, eval_set.spec).read_answer(text, ex)
        records[k] |= {"generated": text, "generated_label": parsed, "generated_correct": parsed == ex.label}


def open_records(
    model: Any, tokenizer: Any, items: Sequence[EvalItem], cfg: EvalConfig, pad_id: int, generate: set[int],
    step: Lockstep = SOLO, work: Work | None = None,
) -> list[dict[str, Any]]:
    """Reference loss for `items` of a generation task, and a greedy answer with its ROUGE for those whose
    index is in `generate`. With other processes (`step`), call with shards of equal length."""
    losses = reference_losses(model, [it.tokenized for it in items], cfg.micro_batch_size, pad_id)
    records = []
    for it, (loss_sum, n) in zip(items, losses, strict=True):
        records.append({
            "row": it.example.row, "index": it.index, "input": it.input, "gold": it.example.answer,
            "prediction": None, "score": None, "correct": None,
            "loss": loss_sum / max(n, 1), "loss_sum": loss_sum, "answer_tokens": n,
        })
    chosen = [k for k, it in enumerate(items) if it.index in generate]
    answers = greedy(model, tokenizer, [items[k].prompt for k in chosen], cfg.max_new_tokens, cfg.micro_batch_size,
                     pad_id, step, cfg.tokens_per_pass, work)
    for k, text in zip(chosen, answers, strict=True):
        rec = records[k]
        rec |= {"prediction": text, "score": rouge_row(rec["gold"], text)["rougeL"],
                "correct": text.strip() == rec["gold"].strip()}
    return records


@torch.no_grad()
def reference_losses(model: Any, examples: Sequence[Any], micro_batch_size: int, pad_id: int) -> list[tuple[float, int]]:
    """Per example, the summed loss of its trained tokens and their number, batched by length."""
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    for start in range(0, len(order), micro_batch_size):
        chunk = order[start : start + micro_batch_size]
        batch = pad_batch([examples[i] for i in chunk], pad_id)
        logits = model(**{k: v.to(device) for k, v in model_inputs(batch).items()}, use_cache=False).logits
        sums, counts = per_example_loss(logits, batch["labels"].to(device))
        for i, s, n in zip(chunk, sums.tolist(), counts.tolist(), strict=True):
            out[i] = (s, int(n))
    return out
