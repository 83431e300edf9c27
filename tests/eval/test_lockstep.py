"""Lockstep evaluation on one process, with the other processes stood in for: a process whose work is
done keeps running passes while another still has some, and its own results do not change.
(tests/train/test_fsdp.py runs the real thing: FSDP on two processes.)"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from multitune.eval.generate import greedy
from multitune.eval.scoring import CandidateTrie
from multitune.eval.search import search_batch


@dataclass
class Others:
    """Stands for a Lockstep whose other processes need `passes` more search passes than this one, and
    `rows` rows to generate for."""

    passes: int = 0
    rows: int = 0
    calls: list[bool] = field(default_factory=list)
    synced = False  # no process group here: generation's own all-reduce is not exercised

    def any(self, flag: bool) -> bool:
        self.calls.append(flag)
        if not flag and self.passes:
            self.passes -= 1
            return True
        return flag

    def most(self, n: int) -> int:
        return max(n, self.rows)


def counted(model) -> list[int]:
    calls: list[int] = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def test_a_search_that_is_done_runs_idle_passes_while_another_process_searches(model):
    rng = random.Random(0)
    candidates = [[rng.randint(10, 300) for _ in range(rng.randint(1, 4))] + [5] for _ in range(12)]
    trie = CandidateTrie.build(candidates)
    prompts = [[1, 2, rng.randint(10, 300), rng.randint(10, 300)] for _ in range(3)]
    calls = counted(model)
    alone = search_batch(model, prompts, [trie] * 3, [0, 4, 7])
    solo_passes = len(calls)
    calls.clear()
    others = Others(passes=3)
    together = search_batch(model, prompts, [trie] * 3, [0, 4, 7], step=others)
    assert len(calls) == solo_passes + 3  # every pass agreed before it runs; 3 idle passes at the end
    assert others.calls.count(True) == solo_passes and others.calls[-4:] == [False] * 4
    for a, b in zip(alone, together, strict=True):
        torch.testing.assert_close(a.logprobs, b.logprobs)


def test_generation_that_is_done_runs_idle_passes_while_another_process_decodes(model, tokenizer):
    prompts = [[1, 20, 30, 40], [1, 50, 60]]
    calls = counted(model)
    alone = greedy(model, tokenizer, prompts, 3, 2, tokenizer.pad_token_id)
    solo_passes = len(calls)
    calls.clear()
    others = Others(passes=4)
    assert greedy(model, tokenizer, prompts, 3, 2, tokenizer.pad_token_id, step=others) == alone
    assert len(calls) == solo_passes + 4 and others.calls.count(True) == solo_passes
    calls.clear()
    assert greedy(model, tokenizer, [], 3, 2, tokenizer.pad_token_id, step=Others(passes=2)) == []
    assert len(calls) == 2  # no rows here, two passes elsewhere
