"""Shared-prefix rows (data/prefix.py): the same losses and gradients as padded rows, less work."""

import random

import pytest
import torch
from data_helpers import step_gradients
from hypothesis import given, settings
from hypothesis import strategies as st

from multitune.config import validate
from multitune.data.collate import pad_batch, real_tokens
from multitune.data.prefix import (
    MIN_PREFIX_LEN,
    last_target,
    prefix_groups,
    row_lengths,
    shareable,
    shared_prefix_batch,
)
from multitune.data.tokenize import IGNORE, Tokenized
from multitune.errors import UserError


def with_prefixes(vocab: int, n: int, seed: int, prefixes: int = 2, longest: int = 20) -> list[Tokenized]:
    """Rows starting with one of `prefixes` shared starts (two tasks' headers), then their own tokens and an
    answer; one row in five has no shared start at all."""
    rng = random.Random(seed)
    starts = [[rng.randrange(10, vocab) for _ in range(rng.randint(MIN_PREFIX_LEN, 14))] for _ in range(prefixes)]
    out = []
    for i in range(n):
        start = starts[i % prefixes] if i % 5 else []
        own = [rng.randrange(10, vocab) for _ in range(rng.randint(2, longest))]
        answer = rng.randint(1, min(3, len(own) - 1))
        ids = start + own
        out.append(Tokenized(ids, [IGNORE] * (len(ids) - answer) + ids[-answer:], task_id=i % prefixes))
    return out


def test_each_example_is_laid_down_up_to_its_last_target_and_sees_what_it_saw_in_its_own_row():
    seqs = with_prefixes(vocab=500, n=10, seed=0)
    batch = shared_prefix_batch(seqs, pad_id=0, max_len=1024, mask="dense")
    assert int(real_tokens(batch)) == sum(len(e.input_ids) for e in seqs)
    ids, pos, mask = batch["input_ids"][0], batch["position_ids"][0], batch["attention_mask"][0, 0]
    labels = batch["labels"][0]
    for ex in seqs:
        end = last_target(ex)
        # the example's last laid-down token sees exactly the example's tokens before its last target,
        # at their own positions; the dropped last target waits on the next slot
        last = [q for q in range(ids.shape[0]) if ids[mask[q]].tolist() == ex.input_ids[:end]
                and pos[mask[q]].tolist() == list(range(end))]
        assert len(last) == 1, ex.input_ids
        assert labels[last[0] + 1] == ex.labels[end]
    # every target appears once, with its own label
    assert sorted(labels[labels != IGNORE].tolist()) == sorted(t for e in seqs for t in e.labels[1:] if t != IGNORE)
    assert batch["input_ids"].numel() < len(seqs) * max(len(e.input_ids) for e in seqs)  # less than padded


def test_blocks_hold_the_dense_mask():
    seqs = with_prefixes(vocab=500, n=9, seed=5)
    batch = shared_prefix_batch(seqs, pad_id=0, max_len=60, mask="blocks")  # several rows, the prefix repeated
    rows, width = batch["input_ids"].shape
    assert rows > 1
    dense = torch.zeros(rows * width, rows * width, dtype=torch.bool)
    q_len = batch["block_q"].shape[1]
    for slot in batch["block_q_take"].tolist():  # the real query slots
        b, j = divmod(slot, q_len)
        dense[batch["block_q"][b, j], batch["block_k"][b][batch["attention_mask"][b, 0, j]]] = True
    expected = torch.block_diag(*shared_prefix_batch(seqs, pad_id=0, max_len=60, mask="dense")["attention_mask"][:, 0])
    real = batch["input_ids"].flatten() != 0  # padding (id 0: the rows' tokens are >= 10) is in no block
    assert torch.equal(dense[real][:, real], expected[real][:, real])
    assert not dense[~real].any()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 12), st.integers(1, 3))
def test_groups_share_only_what_every_row_holds_before_its_first_trained_position(seed, n, prefixes):
    seqs = with_prefixes(vocab=50, n=n, seed=seed, prefixes=prefixes)
    groups = prefix_groups(seqs)
    assert sorted(i for g in groups for i in g.rows) == list(range(n))
    for g in groups:
        if g.prefix_len:
            assert len(g.rows) > 1 and g.prefix_len >= MIN_PREFIX_LEN
            head = seqs[g.rows[0]].input_ids[:g.prefix_len]
            assert all(seqs[i].input_ids[:g.prefix_len] == head and g.prefix_len <= shareable(seqs[i]) for i in g.rows)


def test_rows_longer_than_max_len_split_and_repeat_their_prefix():
    seqs = with_prefixes(vocab=500, n=8, seed=3, prefixes=1)
    batch = shared_prefix_batch(seqs, pad_id=0, max_len=40, mask="dense")
    assert batch["input_ids"].shape[0] > 1
    assert (batch["task_ids"] >= 0).sum(dim=1).max() <= 40
    assert int(real_tokens(batch)) == sum(len(e.input_ids) for e in seqs)
    padding = batch["task_ids"] < 0  # padding sees only itself
    assert (batch["attention_mask"][:, 0].sum(-1)[padding] == 1).all()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prefix_gradients_and_per_task_losses_equal_the_padded_ones(tiny_dir, tokenizer, attn):
    from transformers import AutoModelForCausalLM

    from multitune.models import attention

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation=attn).train()
    seqs = with_prefixes(len(tokenizer), 12, seed=4)
    pad = tokenizer.pad_token_id
    padded = step_gradients(model, [pad_batch(seqs[:6], pad), pad_batch(seqs[6:], pad)], n_tasks=2)
    mask = attention.select_for_shared_prefix(model, virtual_tokens=0)  # blocks under sdpa, additive under eager
    shared = step_gradients(model, [shared_prefix_batch(seqs[:6], pad, 1024, mask),
                                    shared_prefix_batch(seqs[6:], pad, 1024, mask)], n_tasks=2)
    assert shared[1].tolist() == padded[1].tolist()  # the same answer tokens and real tokens in the step
    torch.testing.assert_close(shared[2], padded[2], rtol=1e-4, atol=1e-4)  # per-task [loss sum, tokens]
    for name, g in padded[0].items():
        torch.testing.assert_close(shared[0][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_share_prefix_is_resolved_from_the_config_and_refused_where_it_cannot_apply():
    base = {"tasks": [{"name": "t", "kind": "classification", "source": "x.jsonl"}]}
    assert validate(base).shares_prefix
    assert not validate({**base, "data": {"packing": True}}).shares_prefix
    assert not validate({**base, "train": {"share_prefix": False}}).shares_prefix
    with pytest.raises(UserError, match="share_prefix applies to padded batches"):
        validate({**base, "data": {"packing": True}, "train": {"share_prefix": True}})
    with pytest.raises(UserError, match="flash_attention_2"):
        validate({**base, "model": {"attn_implementation": "flash_attention_2"}, "train": {"share_prefix": True}})


def test_block_attention_gives_the_dense_masks_logits_and_is_what_runs(tiny_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from multitune.data.collate import model_inputs
    from multitune.models import attention

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="sdpa").eval()
    seqs = with_prefixes(len(tokenizer), 8, seed=6)
    batch = shared_prefix_batch(seqs, tokenizer.pad_token_id, 1024, mask="dense")
    real = batch["task_ids"] >= 0
    with torch.no_grad():
        dense = model(**model_inputs(batch)).logits
        assert attention.select_for_shared_prefix(model, virtual_tokens=0) == "blocks"
        assert attention.implementation(model) == attention.NAME  # selected once, through the public interface
        blocks = shared_prefix_batch(seqs, tokenizer.pad_token_id, 1024, mask="blocks")
        assert torch.equal(blocks["input_ids"], batch["input_ids"]) and blocks["attention_mask"].shape[0] > 1
        by_blocks = model(**model_inputs(blocks)).logits
        seeing_all = model(**model_inputs({**blocks, "attention_mask": torch.ones_like(blocks["attention_mask"])})).logits
    torch.testing.assert_close(by_blocks[real], dense[real], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(seeing_all[real], dense[real], atol=1e-3)  # the blocks' mask is the one used


def test_a_block_attention_model_runs_every_other_batch_as_sdpa(tiny_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from multitune.models import attention

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="sdpa").eval()
    padded = pad_batch(with_prefixes(len(tokenizer), 4, seed=7), tokenizer.pad_token_id)
    prompt = padded["input_ids"][:1, :12]

    def run() -> tuple[torch.Tensor, torch.Tensor]:  # padded rows' logits; greedy generation with a cache
        with torch.no_grad():
            logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
            return logits, model.generate(prompt, max_new_tokens=4, do_sample=False)

    as_sdpa = run()
    attention.use_blocks(model)
    assert attention.prefix_mask(model) == "blocks"
    under_blocks = run()
    assert torch.equal(under_blocks[0], as_sdpa[0]) and torch.equal(under_blocks[1], as_sdpa[1])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 12), st.sampled_from([40, 80, 1024]))
def test_row_lengths_are_the_rows_the_batch_lays_down(seed, n, max_len):
    seqs = with_prefixes(vocab=50, n=n, seed=seed)
    batch = shared_prefix_batch(seqs, pad_id=0, max_len=max(max_len, *(len(e.input_ids) for e in seqs)), mask="dense")
    widths = row_lengths(seqs, max(max_len, *(len(e.input_ids) for e in seqs)))
    # a row's last laid-down slot is an example's token or the padding slot holding its last target: a task
    laid = [int((row >= 0).nonzero().max()) + 1 for row in batch["task_ids"]]
    assert laid == widths and max(widths) == batch["input_ids"].shape[1]


@pytest.mark.parametrize("weights, autocast", [(torch.bfloat16, False), (torch.float32, True)])
def test_a_bf16_step_attends_its_blocks_in_float32_on_the_cpu(tiny_dir, tokenizer, monkeypatch, weights, autocast):
    """PyTorch's CPU flash attention runs its backward several times slower in bf16 than in fp32, so block
    attention attends in fp32, with autocast off (or autocast would cast back), and hands bf16 on."""
    from transformers import AutoModelForCausalLM

    from multitune.data.collate import model_inputs
    from multitune.models import attention

    seen: list[tuple[torch.dtype, bool]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append((q.dtype, torch.is_autocast_enabled("cpu")))
        return sdpa(q, *args, **kwargs)

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="sdpa", dtype=weights).train()
    seqs = with_prefixes(len(tokenizer), 8, seed=6)
    batch = model_inputs(shared_prefix_batch(seqs, tokenizer.pad_token_id, 1024,
                                             mask=attention.select_for_shared_prefix(model, virtual_tokens=0)))
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(**batch).logits
    logits.float().logsumexp(-1).mean().backward()
    assert seen and set(seen) == {(torch.float32, False)}  # every layer, fp32, autocast off inside
    assert logits.dtype == torch.bfloat16 and all(p.grad is not None and p.grad.isfinite().all()
                                                  for p in model.parameters() if p.requires_grad)
