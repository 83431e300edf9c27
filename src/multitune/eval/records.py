"""One process's shard of a task, evaluated row by row into small records (no logits are kept).

A record is one line of `eval/<task>/predictions.jsonl` (`report/results.py` documents the fields).
Closed tasks: one scoring pass per batch gives every candidate's log-likelihood, hence the prediction,
its score and, from the gold answer's log-likelihood, the validation loss. Open tasks: a loss pass on
the references. Both: greedy generation when asked, on `eval.generate_max_rows` rows spread over the set.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from multitune.config.schema import EvalConfig
from multitune.data.collate import model_inputs, pad_batch
from multitune.eval.generate import greedy
from multitune.eval.items import EvalItem, EvalSet, choice_text_tries
from multitune.eval.metrics import parse_choice, parse_label, rouge_row
from multitune.eval.scoring import (
    CandidateTrie,
    Scores,
    prefix_cache,
    prompts_per_pass,
    score_batch,
    shared_prefix_len,
)
from multitune.eval.search import search_batch
from multitune.loss import per_example_loss

# Candidate trees up to this many nodes are scored in one pass; larger ones (77 banking labels: ~200
# nodes) by the exact best-first search, whose cost follows the winner's length instead.
SEARCH_FROM_NODES = 16
# Room a generated closed answer gets beyond the longest candidate ("The answer is B." is 5 tokens in
# Llama 3); a model that ends its turn after the label stops there anyway.
CLOSED_GENERATION_SLACK = 8


def closed_records(
    model: Any, tokenizer: Any, eval_set: EvalSet, items: Sequence[EvalItem], all_prompts: Sequence[Sequence[int]],
    cfg: EvalConfig, pad_id: int, generate: set[int],
) -> list[dict[str, Any]]:
    """Score `items`, this process's rows of a classification or multiple-choice task, and generate for
    those whose index is in `generate`.

    `all_prompts` are the prompts of every process's rows: the prefix they share is computed once.
    """
    prefix_len = shared_prefix_len(all_prompts)
    prefix = prefix_cache(model, all_prompts[0][:prefix_len]) if items and prefix_len else []
    # Each row's scores become its record as soon as its batch is done: a record is all that is kept.
    records: list[dict[str, Any]] = [{} for _ in items]
    for k, s in score_items(model, items, [it.trie for it in items], cfg.micro_batch_size, prefix, prefix_len,
                            every_candidate=cfg.length_normalized):
        records[k] = _closed_record(items[k], s, cfg.length_normalized)
    if cfg.choice_texts and eval_set.spec.choice_texts and items:
        texts = score_items(model, items, choice_text_tries(tokenizer, items), cfg.micro_batch_size, prefix, prefix_len,
                            every_candidate=True)
        for k, s in texts:
            it = items[k]
            records[k] |= {"choice_scores": [float(x) for x in s.logprobs], "gold_index": it.gold_index,
                           "choice_chars": [len(t) for t in it.example.choice_texts or ()]}
    if generate:
        _add_closed_generations(model, tokenizer, eval_set, items, records, cfg, pad_id, generate)
    return records


def score_items(
    model: Any, items: Sequence[EvalItem], tries: Sequence[CandidateTrie | None], micro_batch_size: int,
    prefix: Sequence[tuple[torch.Tensor, torch.Tensor]], prefix_len: int, *, every_candidate: bool,
) -> Iterator[tuple[int, Scores]]:
    """(position in `items`, candidate scores) of every item, batch after batch, batched by prompt length
    (scores do not depend on the batching). A caller that keeps something small per row instead of the
    scores keeps evaluation memory flat however many rows there are.

    `every_candidate`: every candidate's exact log-likelihood (one tree pass); otherwise the winner's and
    the gold answer's are exact and a candidate proven to lose may be -inf (`eval/search.py`).
    """
    if not items:
        return
    assert all(t is not None for t in tries)
    largest = max(len(t) for t in tries)  # type: ignore[arg-type]
    search = not every_candidate and largest > SEARCH_FROM_NODES
    per_pass = micro_batch_size if search else prompts_per_pass(largest, model.config.vocab_size, micro_batch_size)
    order = sorted(range(len(items)), key=lambda i: len(items[i].prompt))
    for start in range(0, len(order), per_pass):
        chunk = order[start : start + per_pass]
        prompts, chunk_tries = [items[i].prompt for i in chunk], [tries[i] for i in chunk]
        got = (search_batch(model, prompts, chunk_tries, [items[i].gold_index for i in chunk], prefix, prefix_len)
               if search else score_batch(model, prompts, chunk_tries, prefix, prefix_len))
        yield from zip(chunk, got, strict=True)


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
    cfg: EvalConfig, pad_id: int, generate: set[int],
) -> None:
    chosen = [k for k, it in enumerate(items) if it.index in generate]
    if not chosen:
        return
    longest = max(len(c) for k in chosen for c in items[k].trie.candidates)  # type: ignore[union-attr]
    answers = greedy(model, tokenizer, [items[k].prompt for k in chosen], longest + CLOSED_GENERATION_SLACK,
                     cfg.micro_batch_size, pad_id)
    for k, text in zip(chosen, answers, strict=True):
        ex = items[k].example
        assert ex.candidates is not None
        # A multiple-choice row answered by its choice texts (answer_format: text) is read like a label.
        parsed = (parse_label(text, ex.candidates) if eval_set.spec.labels or ex.candidates == ex.choice_texts
                  else parse_choice(text, ex.candidates))
        records[k] |= {"generated": text, "generated_label": parsed, "generated_correct": parsed == ex.label}


def open_records(
    model: Any, tokenizer: Any, items: Sequence[EvalItem], cfg: EvalConfig, pad_id: int, generate: set[int],
) -> list[dict[str, Any]]:
    """Reference loss for `items` of a generation task, and a greedy answer with its ROUGE for those whose
    index is in `generate`."""
    losses = reference_losses(model, [it.tokenized for it in items], cfg.micro_batch_size, pad_id)
    records = []
    for it, (loss_sum, n) in zip(items, losses, strict=True):
        records.append({
            "row": it.example.row, "index": it.index, "input": it.input, "gold": it.example.answer,
            "prediction": None, "score": None, "correct": None,
            "loss": loss_sum / max(n, 1), "loss_sum": loss_sum, "answer_tokens": n,
        })
    chosen = [k for k, it in enumerate(items) if it.index in generate]
    if chosen:
        answers = greedy(model, tokenizer, [items[k].prompt for k in chosen], cfg.max_new_tokens,
                         cfg.micro_batch_size, pad_id)
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
