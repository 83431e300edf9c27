"""The attention masks (data/masks.py): exact values, and each mask agreeing with the others where two
layouts describe the same attention."""

import torch

from multitune.data.masks import additive, causal, packed_mask, padded_blocks, segment_mask, with_leading_keys


def test_causal_sees_the_earlier_keys_whole_and_itself_causally():
    assert causal(3, 2).int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert causal(1, 4).all() and causal(0, 3).shape == (0, 3)


def test_a_suffix_sees_its_shared_prefix_and_itself_not_the_other_suffixes():
    # a shared prefix (segment 0) of 2 tokens, suffixes 1 and 2 of 2 tokens each, one padding token
    segments = torch.tensor([[0, 0, 1, 1, 2, 2, -2]])
    prefix_of = torch.tensor([[-1, -1, 0, 0, 0, 0, -1]])
    mask = segment_mask(segments, prefix_of)[0, 0]
    assert mask.shape == (7, 7)
    assert mask[5].int().tolist() == [1, 1, 0, 0, 1, 1, 0]  # suffix 2's last token
    assert mask[6].int().tolist() == [0, 0, 0, 0, 0, 0, 1]  # padding: itself only
    # suffix 2's block, cut out of the row, is the shared prefix seen whole and itself causally
    assert torch.equal(mask[4:6][:, [0, 1, 4, 5]], causal(2, 2))


def test_packed_sequences_see_only_themselves():
    mask = packed_mask(torch.tensor([[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]))[:, 0]
    expected = [torch.block_diag(torch.ones(3, 3), torch.ones(2, 2)).tril().bool(),
                torch.block_diag(torch.ones(2, 2), torch.ones(3, 3)).tril().bool()]
    assert torch.equal(mask, torch.stack(expected))


def test_leading_keys_are_seen_in_every_form_of_mask():
    assert with_leading_keys(torch.tensor([[0, 1]]), 1).tolist() == [[1, 0, 1]]
    assert with_leading_keys(causal(2), 1).tolist() == [[True, True, False], [True, True, True]]
    low = torch.finfo(torch.float32).min
    assert with_leading_keys(additive(causal(2)[None, None]), 1).tolist() == [[[[0.0, 0.0, low], [0.0, 0.0, 0.0]]]]
    assert additive(causal(2)).tolist() == [[0.0, low], [0.0, 0.0]]


def test_padded_blocks_keep_each_mask_and_give_padding_queries_one_key():
    out = padded_blocks([causal(1, 1), causal(2)], q_len=2, k_len=3)[:, 0].int().tolist()
    assert out == [[[1, 1, 0], [1, 0, 0]],  # one real query; the padded one sees key 0
                   [[1, 0, 0], [1, 1, 0]]]  # column 2 is padding, seen by nobody
