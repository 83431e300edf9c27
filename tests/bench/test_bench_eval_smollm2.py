"""bench/eval/smollm2.py (issue 23): the hooks count what the evaluation's own counter counts, the
limits' arithmetic gives known values, and the table puts an older tree's columns beside this one's."""

from __future__ import annotations

import pytest
import torch

from bench.eval.counts import Calls, Params, count_forwards, flop_fraction, needed_flops, params
from bench.eval.table import derive, table
from multitune.eval.pool import Work
from multitune.eval.scoring import CandidateTrie
from multitune.eval.search import score_rows


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def test_params_split_a_tied_model_into_body_and_head(llama):
    p = params(llama)
    layer = 16 * 16 * 2 + 16 * 8 * 2 + 3 * 16 * 32 + 2 * 16  # q, o; k, v; mlp; two norms
    assert p.head == 32 * 16 and p.body == 2 * layer + 16  # + the final norm
    assert p.total == p.body + p.head and p.weight_bytes == 4 * p.total


def test_the_hooks_count_padding_of_padded_calls_and_none_in_packed_ones(llama):
    ids = torch.tensor([[0, 0, 5, 6], [3, 4, 5, 6]])
    with count_forwards(llama) as calls, torch.no_grad():
        llama(input_ids=ids, attention_mask=(ids != 0).long(), logits_to_keep=1)
    assert (calls.positions, calls.padding, calls.logits) == ([8], [2], [2])
    # Packed scoring: the evaluation's own counter and the hooks agree call for call.
    trie = CandidateTrie.build([[7, 1], [7, 2, 1], [9, 1], [9, 3, 1]])
    work = Work()
    with count_forwards(llama) as calls:
        list(score_rows(llama, [[1, 2, 3, 4], [1, 2, 5], [1, 2, 6, 6, 6]], [trie] * 3, [0, 2, 3],
                        every_candidate=False, work=work))
    assert calls.forwards == work.forwards and sum(calls.positions) == work.positions
    # the prefix pass, which needs no logits, still keeps one position's (a forward returns some)
    assert sum(calls.logits) == work.logit_positions + 1 and sum(calls.padding) == 0
    # Needed: the prefix [1, 2] once, each prompt's rest (2 + 1 + 3), at least each gold path (1, 0, 1 nodes)
    assert 2 + 6 + 2 <= work.needed_positions <= work.positions


def test_derive_gives_the_fraction_of_the_flop_limit_and_the_weight_read_ratio():
    p = Params(total=135, body=100, head=35, weight_bytes=500)
    assert needed_flops(10, 2, p) == 2 * (10 * 100 + 2 * 35)
    assert flop_fraction(2e9, 100.0, 0.4) == pytest.approx(0.05)
    machine = {"peak_gflops": {"float32": 1e-6}, "read_bandwidth_gbs": 1e-6}  # 1,000 FLOP/s, 1,000 B/s
    work = {"needed_positions": 30, "needed_logits": 4, "attention_pairs": 100, "attention_needed": 80}
    scored = {"task": "t", "model": "m", "method": "scored", "dtype": "float32", "rows": 2, "seconds": 10.0,
              "params": vars(p), "forwards": 3, "positions": 40, "padding": 0, "logit_positions": 6, "work": work}
    d = derive(scored, machine)
    assert d["rows_per_s"] == 0.2 and d["needed_per_row"] == 15 and d["positions_per_row"] == 20
    assert d["limit_s"] == pytest.approx(2 * (30 * 100 + 4 * 35) / 1000)  # 6.28 s of FLOPs
    assert d["flop_fraction"] == pytest.approx(0.628) and d["attention_padding_share"] == pytest.approx(0.2)
    greedy = scored | {"method": "greedy", "forwards": 4, "seconds": 4.0,
                       "calls": vars(Calls([7, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]))}
    g = derive(greedy, machine)
    assert g["weight_read_s"] == pytest.approx(2.0) and g["weight_read_ratio"] == pytest.approx(2.0)
    # roofline: the 7-position call costs 1.47 s of FLOPs, less than its 0.5 s read? no: 1.47 > 0.5
    assert g["roofline_s"] == pytest.approx(2 * (7 * 100 + 35) / 1000 + 3 * 0.5)
    # An older tree's row takes the needed positions of this tree's row with the same key.
    old = derive(scored | {"work": None, "seconds": 20.0}, machine, needed_from=[scored])
    assert old["flop_fraction"] == pytest.approx(0.314) and "attention_padding_share" not in old
    report = {"machine": {**machine, "cpu": "cpu", "threads": 2, "torch": "2", "flags": {"amx_bf16": False},
                          "peak_gflops": {"float32": 1e-6}},
              "results": [d, g], "before": [old, {"task": "x", "error": "no"}], "before_tree": "/tmp/old"}
    text = table(report)
    assert "amx_bf16 no" in text and "rows/s (before)" in text and "could not evaluate x: no" in text
    assert "| t | m | scored | float32 | 2 | 15.0 | 0.20 |" in text and text.count("0.628") == 1
