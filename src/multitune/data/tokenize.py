"""Chat template -> token ids + labels with the loss on the answers only.

The conversation is rendered with the tokenizer's own chat template, then cut into segments at every
assistant turn: the text the template puts before an answer (system, user, headers) is not trained;
the answer and the template's end-of-turn token after it are, and nothing after that token (ChatML puts a
newline after `<|im_end|>`: the model never has to produce it, since generation stops at the end of turn). Each segment is tokenised on its own and
the ids concatenated, so an answer is encoded exactly as the model will produce it after the prompt
at inference time (a BPE merge across the prompt/answer boundary can never leak prompt tokens into the
labels, or answer tokens into the prompt).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from multitune.errors import UserError
from multitune.tasks.base import Example, Message

IGNORE = -100  # label of a token that carries no loss (torch's cross_entropy ignore_index)


@dataclass(frozen=True)
class Tokenized:
    """One training example: `labels[i]` is `input_ids[i]` where the token is trained, else IGNORE."""

    input_ids: list[int]
    labels: list[int]
    task_id: int

    @property
    def n_answer_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def render(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def segments(tokenizer: Any, messages: Sequence[Message]) -> list[tuple[str, bool]]:
    """Cut the rendered conversation into (text, trained) pieces; assistant turns are trained.

    The template must render a conversation as a prefix of the same conversation with one more turn,
    which holds for Llama 3 and most chat templates; one that does not is refused rather than guessed.
    """
    out: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        full = render(tokenizer, messages[: i + 1])
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise UserError(
                "the tokenizer's chat template does not render conversations as prefixes of each other, "
                "so the answer tokens cannot be located",
                where=f"chat template of {getattr(tokenizer, 'name_or_path', 'the tokenizer')}",
                fix="use a model whose template renders turns incrementally (e.g. Llama 3 Instruct)",
            )
        out.append((prompt[len(done):], False))
        out.append((full[len(prompt):], True))
        done = full
    return out


@functools.lru_cache(maxsize=16)
def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template closes an assistant turn with (`<|eot_id|>` in Llama 3,
    `<|im_end|>` in ChatML), read off a rendered probe conversation; None when the template closes a
    turn with ordinary text only."""
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"}]
    closing = segments(tokenizer, probe)[-1][0]
    closing = closing[closing.rfind("Yes") + len("Yes"):]
    special = set(tokenizer.all_special_ids) | {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
    ids = tokenizer(closing, add_special_tokens=False)["input_ids"]
    return next((i for i in ids if i in special), None)


def through_end_of_turn(tokenizer: Any, ids: Sequence[int]) -> int:
    """How many of an answer segment's `ids` are trained: up to and including the end-of-turn token;
    all of them when it is absent."""
    eot = end_of_turn_id(tokenizer)
    return ids.index(eot) + 1 if eot is not None and eot in ids else len(ids)


def encode_segments(tokenizer: Any, pieces: Sequence[tuple[str, bool]], task_id: int) -> Tokenized:
    ids: list[int] = []
    labels: list[int] = []
    encoded = tokenizer([text for text, _ in pieces], add_special_tokens=False)["input_ids"]
    for (_, trained), piece in zip(pieces, encoded, strict=True):
        ids.extend(piece)
        n = through_end_of_turn(tokenizer, piece) if trained else 0
        labels.extend([*piece[:n], *[IGNORE] * (len(piece) - n)])
    return Tokenized(ids, labels, task_id)


def fit_length(example: Tokenized, max_seq_len: int, policy: str, where: str) -> Tokenized | None:
    """Apply the truncation policy. Returns None when the example must be dropped.

    `truncate` removes the oldest prompt tokens (after the first one, the template's begin-of-text)
    and never an answer token of the last turn; an example whose final answer alone does not fit is
    dropped. `drop` drops any over-long example; `error` refuses it.
    """
    excess = len(example.input_ids) - max_seq_len
    if excess <= 0:
        return example
    if policy == "error":
        raise UserError(
            f"example is {len(example.input_ids)} tokens, over data.max_seq_len={max_seq_len}",
            where=where,
            fix="raise data.max_seq_len, or set data.truncation=truncate or drop",
        )
    if policy == "drop":
        return None
    if 1 + excess > last_answer_start(example.labels):
        return None
    ids = example.input_ids[:1] + example.input_ids[1 + excess:]
    labels = example.labels[:1] + example.labels[1 + excess:]
    if all(x == IGNORE for x in labels):
        return None
    return Tokenized(ids, labels, example.task_id)


def last_answer_start(labels: Sequence[int]) -> int:
    """Index of the first token of the last trained run of tokens (the final answer); untrained tokens
    after it (a template's newline after the end of turn) are skipped.

    >>> last_answer_start([-100, -100, 5, 6, -100, 7, 8, -100])
    5
    """
    i = len(labels)
    while i > 0 and labels[i - 1] == IGNORE:
        i -= 1
    while i > 0 and labels[i - 1] != IGNORE:
        i -= 1
    return i


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    """Over `max_seq_len` under `truncation: drop`, or with a final answer that alone does not fit."""
    dropped_no_answer: int = 0
    """Examples with no trained token at all (nothing to learn from them)."""
    tokens: int = 0
    answer_tokens: int = 0

    def count(self, status: str, fitted: Tokenized | None) -> None:
        if fitted is None:
            if status == "too_long":
                self.dropped_too_long += 1
            else:
                self.dropped_no_answer += 1
            return
        self.truncated += status == "truncated"
        self.examples += 1
        self.tokens += len(fitted.input_ids)
        self.answer_tokens += fitted.n_answer_tokens


def tokenize_one(tokenizer: Any, ex: Example, task_id: int, max_seq_len: int, policy: str) -> tuple[str, Tokenized | None]:
    """One example -> (status, tokens): status is `kept`, `truncated`, `too_long` or `no_answer`, tokens
    None when the example is dropped."""
    tok = encode_segments(tokenizer, segments(tokenizer, ex.messages), task_id)
    if tok.n_answer_tokens == 0:
        return "no_answer", None
    fitted = fit_length(tok, max_seq_len, policy, where=f"task {ex.task}, row {ex.row}")
    if fitted is None:
        return "too_long", None
    return ("kept" if fitted is tok else "truncated"), fitted


def tokenize_examples(
    tokenizer: Any, examples: Sequence[Example], task_id: int, max_seq_len: int, policy: str
) -> tuple[list[Tokenized], TokenizeStats]:
    """Tokenise a task's examples with answer-only labels and the length policy applied; dropped examples
    are counted in the stats, not returned."""
    out: list[Tokenized] = []
    stats = TokenizeStats()
    for ex in examples:
        status, fitted = tokenize_one(tokenizer, ex, task_id, max_seq_len, policy)
        stats.count(status, fitted)
        if fitted is not None:
            out.append(fitted)
    return out, stats


def prompt_ids(tokenizer: Any, prompt: Sequence[Message]) -> list[int]:
    """Token ids of a prompt up to and including the assistant header, as training encodes them."""
    pieces = segments(tokenizer, [*prompt, {"role": "assistant", "content": ""}])[:-1]
    return encode_segments(tokenizer, pieces, task_id=-1).input_ids


def answer_ids(tokenizer: Any, prompt: Sequence[Message], answer: str) -> list[int]:
    """Token ids of `answer` as the final assistant turn after `prompt`, through its end-of-turn token
    (the ids training puts a loss on)."""
    pieces = segments(tokenizer, [*prompt, {"role": "assistant", "content": answer}])
    ids = tokenizer(pieces[-1][0], add_special_tokens=False)["input_ids"]
    return ids[: through_end_of_turn(tokenizer, ids)]
