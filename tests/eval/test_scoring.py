"""Candidate scoring: exact log-likelihoods, whatever the batching, the shared prefix or the search."""

import math
import random

import pytest
import torch

from multitune.eval.scoring import CandidateTrie, shared_prefix_len
from multitune.eval.search import candidate_logprobs, score_batch, search_batch


def brute_force(model, prompt, candidate):
    ids = torch.tensor([prompt + candidate])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(logp[len(prompt) - 1 + j, tok].item() for j, tok in enumerate(candidate))


def small_llama(attn: str, vocab: int = 50, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, attn_implementation=attn)
    return LlamaForCausalLM(cfg).eval()


def test_shared_prefix_scoring_equals_separate_full_passes(model):
    prompt = [0, 5, 9, 33, 17, 8, 41]
    candidates = [[12], [30, 31], [7, 8, 9, 10], [30, 99, 4]]
    got = candidate_logprobs(model, prompt, candidates)
    want = torch.tensor([brute_force(model, prompt, c) for c in candidates])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_single_token_candidates_need_no_second_pass(model):
    got = candidate_logprobs(model, [0, 3, 4], [[5], [6]])
    torch.testing.assert_close(got, torch.tensor([brute_force(model, [0, 3, 4], [5]),
                                                  brute_force(model, [0, 3, 4], [6])]), rtol=1e-4, atol=1e-4)


def test_trie_holds_each_shared_prefix_once():
    trie = CandidateTrie.build([[4, 5, 9], [4, 5, 6, 9], [4, 7, 9], [8, 9]])
    assert trie.tokens == [4, 5, 6, 7, 8]  # prefixes (4), (4,5), (4,5,6), (4,7), (8)
    assert trie.parents == [-1, 0, 1, 0, -1]
    assert trie.depths == [1, 2, 3, 2, 1]
    assert trie.paths == [[0, 1], [0, 1, 2], [0, 3], [4]]
    assert trie.roots == [0, 4] and trie.children == [[1, 3], [2], [], [], []]
    assert trie.ends == [[], [0], [1], [2], [3]]
    assert trie.subtree == [[0, 1, 3, 2], [1, 2], [2], [3], [4]]  # shallowest first
    assert trie.ancestry[2].tolist() == [True, True, True, False, False]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_batched_tree_behind_a_shared_prefix_equals_brute_force(attn):
    m = small_llama(attn)
    prompts = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 9], [1, 2, 3, 7, 8, 9, 10, 11, 12, 13]]
    cands = [[[12], [30, 31], [7, 8, 9, 10], [30, 31, 4]], [[5, 6], [5, 7], [8]], [[3, 3, 3]]]
    assert shared_prefix_len(prompts) == 3
    for tokens_per_pass in (512, 8, 1):  # all rows in one pass; a few at a time; one row a pass
        got = score_batch(m, prompts, [CandidateTrie.build(c) for c in cands], tokens_per_pass=tokens_per_pass)
        for prompt, cs, scores in zip(prompts, cands, got, strict=True):
            want = torch.tensor([brute_force(m, prompt, c) for c in cs])
            torch.testing.assert_close(scores.logprobs, want, rtol=1e-4, atol=1e-4)
            assert scores.lengths.tolist() == [len(c) for c in cs]


def bigram_model(table: dict[int, dict[int, float]], vocab: int = 8):
    """A Llama whose next-token logits depend only on the current token: `table[cur][nxt]` (0 elsewhere).

    One-hot embeddings, attention and MLP outputs zeroed (each layer is the identity through its
    residual), the final RMSNorm turning e_t * s into e_t * sqrt(vocab), and an output head that reads
    the table off that one-hot vector.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=vocab, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1, rms_norm_eps=1e-12, tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg).eval()
    head = torch.zeros((vocab, vocab))
    for cur, row in table.items():
        for nxt, logit in row.items():
            head[nxt, cur] = logit / math.sqrt(vocab)
    with torch.no_grad():
        m.model.embed_tokens.weight.copy_(torch.eye(vocab) * 3.0)
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        m.lm_head.weight.copy_(head)
    return m


def test_hand_built_model_scoring_picks_the_known_label():
    # Tokens: 1 ends the prompt, 2 "A", 3 "B", 4 "C", 5 "x", 7 end of turn. The first token alone
    # favours "B" (logit 3 vs 2) but B's mass then splits between C and x, both weak before the end of
    # turn, while "A" is followed by a confident end of turn: "A" must win.
    table = {1: {2: 2.0, 3: 3.0}, 2: {7: 6.0}, 3: {4: 1.0, 5: 1.0}, 4: {7: 0.5}, 5: {7: 0.0}}
    m = bigram_model(table)
    candidates = [[2, 7], [3, 4, 7], [3, 5, 7]]

    def lp(cur, nxt):  # the model's log P(nxt | cur), read off the table by hand
        logits = torch.zeros(8)
        for k, v in table.get(cur, {}).items():
            logits[k] = v
        return torch.log_softmax(logits, -1)[nxt].item()

    want = [lp(1, 2) + lp(2, 7), lp(1, 3) + lp(3, 4) + lp(4, 7), lp(1, 3) + lp(3, 5) + lp(5, 7)]
    # e.g. log P(A | 1) = 2 - log(6 + e^2 + e^3) = -1.5108 and log P(eot | A) = 6 - log(7 + e^6) = -0.0172
    assert want == pytest.approx([-1.5280, -3.6050, -4.0270], abs=1e-4)
    scores = score_batch(m, [[0, 6, 1]], [CandidateTrie.build(candidates)])[0]
    torch.testing.assert_close(scores.logprobs, torch.tensor(want), rtol=0, atol=1e-4)
    assert int(scores.logprobs.argmax()) == 0
    found = search_batch(m, [[0, 6, 1]], [CandidateTrie.build(candidates)], golds=[2])[0]
    assert int(found.logprobs.argmax()) == 0
    assert found.logprobs[0].item() == pytest.approx(want[0], abs=1e-4)
    assert found.logprobs[2].item() == pytest.approx(want[2], abs=1e-4)  # the gold is always exact


@pytest.mark.parametrize(("attn", "tokens_per_pass"), [("sdpa", 512), ("eager", 512), ("sdpa", 1)])
def test_search_finds_the_full_tree_winner_and_the_exact_gold(attn, tokens_per_pass):
    # tokens_per_pass 1: every row feeds one node a round (eval/search.Width), in passes of its own
    m = small_llama(attn, vocab=40, seed=1)
    with torch.no_grad():
        m.lm_head.weight.mul_(20.0)  # peaked distributions, so the search actually prunes
    rng = random.Random(0)
    pruned = 0
    for _ in range(5):
        cands: list[list[int]] = []
        while len(cands) < rng.randint(3, 12):
            c = [rng.randint(1, 6) for _ in range(rng.randint(0, 3))] + [39]
            if c not in cands:
                cands.append(c)
        trie = CandidateTrie.build(cands)
        prompts = [[1, 2] + [rng.randint(1, 38) for _ in range(rng.randint(1, 6))] for _ in range(4)]
        golds = [rng.randrange(len(cands)) for _ in prompts]
        full = score_batch(m, prompts, [trie] * 4)
        found = search_batch(m, prompts, [trie] * 4, golds, tokens_per_pass=tokens_per_pass)
        for f, s, gold in zip(full, found, golds, strict=True):
            assert int(s.logprobs.argmax()) == int(f.logprobs.argmax())
            known = torch.isfinite(s.logprobs)
            assert known[gold] and known[int(f.logprobs.argmax())]
            torch.testing.assert_close(s.logprobs[known], f.logprobs[known], rtol=1e-4, atol=1e-4)
            pruned += int((~known).sum())
    assert pruned > 0

