"""Batched greedy generation from prompt token ids (what a chat user of the model would see).

Decoding runs in the packed passes of `eval/pool.py`: a pass holds one new token of every row under way
and the prompts of rows starting, with no padding; a row leaves as soon as it ends (end of turn or
`max_new_tokens`) and the next row takes its place, and the keys and values go into a pool allocated
once instead of a cache copied at every step. The prompts' shared prefix runs once. Models whose
generation config asks for more than the argmax (a repetition penalty, banned words, ...) go through
transformers' `generate`, in left-padded batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from multitune.data.masks import causal
from multitune.eval.lockstep import SOLO, Lockstep
from multitune.eval.pool import KVPool, Segment, Work, drive, supported
from multitune.eval.scoring import shared_prefix_len
from multitune.eval.search import TOKENS_PER_PASS

# Generation settings under which greedy decoding is the argmax of the logits, each with its neutral values.
PLAIN = {"repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0),
         "no_repeat_ngram_size": (None, 0), "min_length": (None, 0), "min_new_tokens": (None, 0),
         "bad_words_ids": (None,), "sequence_bias": (None,), "suppress_tokens": (None,),
         "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
         "exponential_decay_length_penalty": (None,), "stop_strings": (None,)}


@dataclass(eq=False)  # rows are told apart by identity (drive removes them from a list)
class _Decoding:
    index: int  # position in the caller's list
    prompt: list[int]  # after the shared prefix
    start: int  # position of prompt[0]
    max_new_tokens: int
    stop: frozenset[int]
    keys: list[int] = field(default_factory=list)
    out: list[int] = field(default_factory=list)
    done: bool = False

    def wants(self) -> int:
        return 0 if self.done else len(self.prompt) if not self.keys else 1

    def feed(self, pool: KVPool) -> Segment:
        if not self.keys:
            self.keys = pool.alloc(len(self.prompt))
            return Segment(list(self.keys), list(self.prompt), [self.start + i for i in range(len(self.prompt))],
                           causal(len(self.prompt)), [len(self.prompt) - 1])
        self.keys += pool.alloc(1)
        return Segment(list(self.keys), [self.out[-1]], [self.start + len(self.prompt) + len(self.out) - 1],
                       causal(1, len(self.keys) - 1), [0])

    def needed(self) -> tuple[int, int]:
        # The prompt and every generated token but the last; the prompt's last and those give the logits.
        return len(self.prompt) + len(self.out) - 1, len(self.out)

    def take(self, token: int) -> None:
        self.out.append(token)
        self.done = token in self.stop or len(self.out) >= self.max_new_tokens


def _read(logits: torch.Tensor, fed: list[tuple[Any, int]]) -> None:
    tokens = logits.argmax(dim=-1).tolist()  # one transfer to the host for the whole pass
    for row, first in fed:
        row.take(tokens[first])


@torch.no_grad()
def greedy(
    model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int, pad_id: int,
    step: Lockstep = SOLO, tokens_per_pass: int = TOKENS_PER_PASS, work: Work | None = None,
) -> list[str]:
    """Decode greedily after each prompt until an end-of-turn/sequence token or `max_new_tokens`; the
    answers come back in the prompts' order. `batch_size` is the rows of a batch of transformers'
    `generate`, where that runs (module docstring). With other processes (`step`), every process runs as
    many passes (`eval/lockstep.py`)."""
    if not plain_greedy(model):
        return _generate(model, tokenizer, prompts, max_new_tokens, batch_size, pad_id, step)
    stop = frozenset(_eos_ids(model))
    prefix_len = shared_prefix_len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    rows = [_Decoding(i, list(prompts[i][prefix_len:]), prefix_len, max_new_tokens, stop) for i in order]
    out: list[str] = [""] * len(prompts)
    shared_prefix = list(prompts[0][:prefix_len]) if prompts else []
    for row in drive(model, rows, shared_prefix, _read, tokens_per_pass=tokens_per_pass, step=step, work=work):
        out[row.index] = tokenizer.decode(row.out, skip_special_tokens=True).strip()
    return out


def plain_greedy(model: Any) -> bool:
    """Whether greedy decoding of `model` is the argmax of its logits, and packed passes can run it."""
    config = getattr(model, "generation_config", None)
    settings_plain = config is None or all(getattr(config, k, None) in neutral for k, neutral in PLAIN.items())
    return settings_plain and supported(model)


def _eos_ids(model: Any) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def _generate(
    model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int, pad_id: int,
    step: Lockstep,
) -> list[str]:
    """transformers' `generate` in left-padded batches sorted by length. With other processes, every
    process runs as many batches (padded with one-token prompts whose answers are dropped), each with
    `synced_gpus`: a process whose rows are done keeps stepping until all are."""
    device = next(model.parameters()).device
    padded = list(prompts) + [[pad_id]] * (step.most(len(prompts)) - len(prompts))
    order = sorted(range(len(padded)), key=lambda i: (i >= len(prompts), len(padded[i])))  # fillers last
    out: list[str] = [""] * len(padded)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = left_pad([padded[i] for i in chunk], pad_id)
        width = ids.shape[1]
        generated = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=pad_id, synced_gpus=step.synced,
        )
        for row, i in enumerate(chunk):
            out[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True).strip()
    return out[: len(prompts)]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask (B, longest) with each prompt at the right end, so every row's next
    token sits at the same position.

    >>> left_pad([[7, 8], [9]], 0)
    (tensor([[7, 8],
            [0, 9]]), tensor([[1, 1],
            [0, 1]]))
    """
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(list(p))
        mask[row, width - len(p):] = 1
    return ids, mask
