"""Packed passes over the key/value pool: the same numbers as plain forwards, no padding through the linear
layers, and greedy answers equal to transformers' `generate`."""

from __future__ import annotations

import pytest
import torch
from test_scoring import bigram_model

from multitune.data.masks import causal
from multitune.eval.generate import _generate, greedy, plain_greedy
from multitune.eval.lockstep import SOLO
from multitune.eval.pool import KVPool, Segment, Work, drive, pack, pooled
from multitune.eval.scoring import CandidateTrie
from multitune.eval.search import score_rows


def test_pool_slots_are_reused_and_grow_by_doubling():
    pool = KVPool()
    a = pool.alloc(3)
    assert a == [0, 1, 2] and pool.capacity == 256 and pool.in_use == 3
    pool.free(a)
    assert pool.alloc(2) == [0, 1] and pool.in_use == 2
    big = pool.alloc(300)
    assert pool.capacity == 512 and len(set(big)) == 300 and not set(big) & {0, 1}


def test_a_packed_pass_of_several_rows_equals_a_forward_per_row(model):
    prompts = [[1, 20, 30, 40, 50], [1, 20, 7], [1, 20, 9, 9, 9, 9, 9, 11]]
    pool, work = KVPool(), Work()
    shared = pool.alloc(2)  # the shared prefix [1, 20]
    kwargs, _ = pack(pool, [Segment(shared, [1, 20], [0, 1], causal(2), [])], work, "cpu")
    with torch.no_grad(), pooled(model):
        model(**kwargs)
    pool.shared_slots = shared
    segments = []
    for p in prompts:
        rest = p[2:]
        segments.append(Segment(pool.alloc(len(rest)), rest, list(range(2, len(p))), causal(len(rest)),
                                list(range(len(rest)))))
    kwargs, wanted = pack(pool, segments, work, "cpu")
    with torch.no_grad(), pooled(model):
        logits = model(**kwargs).logits[0]
    assert len(wanted) == logits.shape[0] == sum(len(p) - 2 for p in prompts)
    assert work.positions == 2 + sum(len(p) - 2 for p in prompts)  # every token once, no padding
    at = 0
    for p in prompts:
        with torch.no_grad():
            want = model(input_ids=torch.tensor([p])).logits[0, 2:]
        torch.testing.assert_close(logits[at : at + len(p) - 2], want, rtol=1e-4, atol=1e-4)
        at += len(p) - 2


def test_the_search_feeds_the_nodes_that_can_still_win_one_level_at_a_time():
    # The hand-built model of test_scoring: "A" (2, 7) wins; the gold answer is "B x" (3, 5, 7).
    table = {1: {2: 2.0, 3: 3.0}, 2: {7: 6.0}, 3: {4: 1.0, 5: 1.0}, 4: {7: 0.5}, 5: {7: 0.0}}
    m = bigram_model(table)
    trie = CandidateTrie.build([[2, 7], [3, 4, 7], [3, 5, 7]])  # nodes (2), (3), (3, 4), (3, 5)
    work = Work()
    [(_, s)] = list(score_rows(m, [[0, 6, 1]], [trie], [2], every_candidate=False, work=work))
    assert int(s.logprobs.argmax()) == 0 and torch.isfinite(s.logprobs).all()
    # Passes: the prefix [0, 6]; the prompt's last token; the gold path (3), (3, 5), which holds the
    # likeliest first token (3) too; then, the row alone having the whole pass, (2) and (3, 4), whose
    # bounds reach the gold's score.
    assert (work.forwards, work.positions, work.logit_positions) == (4, 2 + 1 + 2 + 2, 1 + 2 + 2)
    # Needed: all but (3, 4), whose bound (-1.948) is below the winner's -1.528: a round feeds it before
    # the winner is known. (2) (-1.511) and (3) (-0.511) reach it; (3, 5) is on the gold path.
    assert (work.needed_positions, work.needed_logits) == (2 + 1 + 3, 1 + 3)


def test_a_row_feeding_one_node_a_round_feeds_only_the_needed_ones():
    # The case above with passes of one token, so the row's width is one node a round (eval/search.Width):
    # after the gold path, (2) alone, the highest bound left, whose end (-1.528) is above (3, 4)'s bound
    # (-1.948): "B y" is never fed. Same answer and passes, one position less: exactly the needed ones.
    table = {1: {2: 2.0, 3: 3.0}, 2: {7: 6.0}, 3: {4: 1.0, 5: 1.0}, 4: {7: 0.5}, 5: {7: 0.0}}
    trie = CandidateTrie.build([[2, 7], [3, 4, 7], [3, 5, 7]])
    work = Work()
    [(_, s)] = list(score_rows(bigram_model(table), [[0, 6, 1]], [trie], [2], every_candidate=False,
                               tokens_per_pass=1, work=work))
    assert int(s.logprobs.argmax()) == 0 and torch.isfinite(s.logprobs[[0, 2]]).all()
    assert not torch.isfinite(s.logprobs[1])  # "B y" (3, 4, 7): pruned, provably below the winner
    assert work.positions == work.needed_positions == 2 + 1 + 3
    assert work.forwards == 4


@pytest.mark.parametrize("tokens_per_pass", [512, 6])
def test_greedy_in_packed_passes_equals_transformers_generate(model, tokenizer, tokens_per_pass):
    prompts = [[1, 20, 30, 40], [1, 20, 60], [1, 20, 5, 6, 7, 8, 9, 10, 11], [1, 20, 33, 2]]
    assert plain_greedy(model)
    work = Work()
    got = greedy(model, tokenizer, prompts, 7, 2, tokenizer.pad_token_id, tokens_per_pass=tokens_per_pass, work=work)
    assert got == _generate(model, tokenizer, prompts, 7, 2, tokenizer.pad_token_id, SOLO)
    assert work.rows == 4 and work.positions <= 2 + sum(len(p) - 2 for p in prompts) + 4 * 6  # nothing padded
    # every token fed is needed: the prompts and each generated token but the last
    assert (work.needed_positions, work.needed_logits) == (work.positions, work.logit_positions)


def test_greedy_stops_a_row_at_its_end_of_turn_and_goes_on_with_the_others(model, tokenizer):
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, int) else eos[0]
    with torch.no_grad():
        first = int(model(input_ids=torch.tensor([[1, 20, 30]])).logits[0, -1].argmax())
    model.generation_config.eos_token_id = [eos, first]  # the first row ends at once
    work = Work()
    got = greedy(model, tokenizer, [[1, 20, 30], [1, 20, 44, 45]], 5, 2, tokenizer.pad_token_id, work=work)
    assert got == _generate(model, tokenizer, [[1, 20, 30], [1, 20, 44, 45]], 5, 2, tokenizer.pad_token_id, SOLO)
    # the prefix [1, 20], both prompts' rest ([30], [44, 45]), then at most 4 tokens of the second row alone
    assert work.positions <= 2 + 1 + 2 + 4


def test_a_model_with_a_repetition_penalty_generates_through_transformers(model, tokenizer):
    model.generation_config.repetition_penalty = 1.3
    assert not plain_greedy(model)
    prompts = [[1, 20, 30, 40], [1, 20, 60]]
    assert greedy(model, tokenizer, prompts, 5, 2, tokenizer.pad_token_id) == \
        _generate(model, tokenizer, prompts, 5, 2, tokenizer.pad_token_id, SOLO)


def test_drive_runs_idle_passes_only_under_lockstep(model):
    work = Work()
    assert list(drive(model, [], [], lambda *_: None, tokens_per_pass=8, step=SOLO, work=work)) == []
    assert work.forwards == 0
