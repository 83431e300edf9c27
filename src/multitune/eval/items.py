"""The evaluation set of each task, tokenised once per run and reused by every evaluation.

An item pairs a validation example with its tokens as training encodes them (the same chat template,
the same truncation), so the prompt a model is scored or generates on is the prompt it was trained
on, and the loss derived from scoring equals the training loss on that row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from multitune.data.tokenize import (
    IGNORE,
    Tokenized,
    answer_ids,
    encode_segments,
    fit_length,
    last_answer_start,
    segments,
)
from multitune.eval.scoring import CandidateTrie
from multitune.kinds import kind
from multitune.tasks import TaskKind
from multitune.tasks.base import Example


@dataclass(frozen=True)
class EvalItem:
    """One evaluated row. `prompt` is everything before the last answer (truncated as in training),
    `tokenized` the whole example with its loss mask (open tasks' loss is computed on it)."""

    index: int  # position in the task's evaluation set: rows are sharded and ordered by it
    example: Example
    tokenized: Tokenized
    prompt: list[int]
    trie: CandidateTrie | None  # the candidates' token tree (closed tasks)
    gold_index: int | None  # position of the gold answer among the candidates
    truncated: bool = False  # the prompt was cut to data.max_seq_len (data.truncation: truncate)

    @property
    def input(self) -> str:
        """The text the row asked (its last user turn), as shown in predictions and reports."""
        users = [m["content"] for m in self.example.prompt if m["role"] == "user"]
        return users[-1] if users else ""


@dataclass(frozen=True)
class EvalSet:
    name: str
    kind: str
    items: list[EvalItem]
    labels: list[str] | None  # a classification task's label set, in order
    dropped: int  # validation rows left out because they do not fit data.max_seq_len

    @property
    def spec(self) -> TaskKind:
        """The table's entry for this task's kind (`multitune.kinds`)."""
        return kind(self.kind)

    @property
    def closed(self) -> bool:
        return self.spec.closed


def build_eval_set(
    tokenizer: Any, name: str, kind: str, examples: Sequence[Example], task_id: int, max_seq_len: int,
    truncation: str, labels: Sequence[str] | None = None, last_answer_only: bool = False,
) -> EvalSet:
    """Tokenise `examples` as training does; examples the length policy drops are counted, not kept.
    `last_answer_only` puts the loss on the final answer alone (a k-shot prompt's answers are context)."""
    answers: dict[str, list[int]] = {}  # candidate -> ids; an answer's encoding does not depend on the prompt
    tries: dict[tuple[str, ...], CandidateTrie] = {}
    items: list[EvalItem] = []
    dropped = 0
    for ex in examples:
        whole = encode_segments(tokenizer, segments(tokenizer, ex.messages), task_id)
        if last_answer_only:
            start = last_answer_start(whole.labels)
            whole = Tokenized(whole.input_ids, [IGNORE] * start + whole.labels[start:], task_id)
        tok = fit_length(whole, max_seq_len, truncation, where=f"task {name}, row {ex.row}")
        if tok is None:
            dropped += 1
            continue
        trie = gold = None
        if ex.candidates is not None:
            key = ex.candidates
            if key not in tries:
                ids = [answers.setdefault(c, answer_ids(tokenizer, ex.prompt, c)) for c in key]
                tries[key] = CandidateTrie.build(ids)
            trie = tries[key]
            gold = key.index(ex.label) if ex.label in key else None
        items.append(EvalItem(len(items), ex, tok, tok.input_ids[: last_answer_start(tok.labels)], trie, gold,
                              truncated=tok is not whole))
    return EvalSet(name, kind, items, list(labels) if labels is not None else None, dropped)


def choice_text_tries(tokenizer: Any, items: Sequence[EvalItem]) -> list[CandidateTrie]:
    """Per item, the tree of its choice texts as whole answers (multiple choice with `choice_texts`)."""
    out = []
    for item in items:
        texts = item.example.choice_texts
        if texts is None:
            raise ValueError(f"row {item.example.row} has no choice texts")
        out.append(CandidateTrie.build([answer_ids(tokenizer, item.example.prompt, t) for t in texts]))
    return out
