"""Packing (DESIGN.md #4): packed sequences stay independent, and training maths is the padded layout's."""

import random

import pytest
import torch
from data_helpers import step_gradients, task
from hypothesis import given, settings
from hypothesis import strategies as st

from multitune.data.collate import model_inputs, pad_batch, real_tokens
from multitune.data.mixture import mixture_order
from multitune.data.packing import best_fit_decreasing, epoch_rows, pack_batch, rows_per_epoch
from multitune.data.prepare import Prepared, TaskSplit
from multitune.data.tokenize import IGNORE, Tokenized
from multitune.loss import answer_token_count, per_task_sums, token_losses
from multitune.train.loop import batches_for_step, make_plan


def examples(vocab: int, n: int, seed: int = 0, n_tasks: int = 2, longest: int = 30) -> list[Tokenized]:
    """Uneven sequences with answers of uneven length, the first token never trained (as a template's BOS)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(4, longest)
        answer = rng.randint(1, length - 2)
        ids = [rng.randrange(10, vocab) for _ in range(length)]
        out.append(Tokenized(ids, [IGNORE] * (length - answer) + ids[-answer:], task_id=i % n_tasks))
    return out


# --- best-fit decreasing --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 64), max_size=60), st.integers(64, 130))
def test_every_item_lands_in_exactly_one_bin_that_fits(lengths, capacity):
    bins = best_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    loads = [sum(lengths[i] for i in b) for b in bins]
    assert all(load <= capacity for load in loads)
    # Any-fit property: a bin was only opened when the item fitted nowhere, so no two bins could merge.
    assert all(a + b > capacity for i, a in enumerate(loads) for b in loads[i + 1:])


def test_best_fit_fills_the_tightest_bin():
    assert best_fit_decreasing([6, 5, 4, 3, 2], capacity=10) == [[0, 2], [1, 3, 4]]
    with pytest.raises(ValueError, match="longer than the capacity"):
        best_fit_decreasing([11], capacity=10)


# --- pack_batch -----------------------------------------------------------------------------------

tokenized = st.builds(
    lambda ids, cut, task_id: Tokenized(ids, [IGNORE] * cut + ids[cut:], task_id),
    st.lists(st.integers(5, 99), min_size=2, max_size=20), st.integers(0, 19), st.integers(0, 3),
).filter(lambda t: t.n_answer_tokens > 0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(tokenized, min_size=1, max_size=4), min_size=1, max_size=4))
def test_pack_batch_keeps_every_sequence_apart_and_intact(rows):
    batch = pack_batch(rows, pad_id=0)
    width = batch["input_ids"].shape[1]
    assert "attention_mask" not in batch
    for r, row in enumerate(rows):
        start = 0
        for ex in row:
            n = len(ex.input_ids)
            assert batch["input_ids"][r, start:start + n].tolist() == ex.input_ids
            assert batch["position_ids"][r, start:start + n].tolist() == list(range(n))
            assert batch["labels"][r, start:start + n].tolist() == [IGNORE] + ex.labels[1:]
            assert batch["task_ids"][r, start:start + n].tolist() == [ex.task_id] * n
            start += n
        assert batch["labels"][r, start:].eq(IGNORE).all() and batch["task_ids"][r, start:].eq(-1).all()
        assert batch["position_ids"][r, start:].tolist() == list(range(width - start))
    flat = [ex for row in rows for ex in row]
    assert int(real_tokens(batch)) == sum(len(ex.input_ids) for ex in flat)
    # Answer tokens are the padded layout's: the first label of a sequence is never a target there either.
    assert int(answer_token_count(batch["labels"])) == int(answer_token_count(pad_batch(flat, 0)["labels"]))


# --- the model: packed equals alone ---------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_packed_sequence_has_the_logits_it_has_alone(tiny_dir, tokenizer, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation=attn).eval()
    seqs = examples(len(tokenizer), 5, seed=1)
    rows = [seqs[:3], seqs[3:]]  # two rows of different lengths: the shorter one has a padding tail
    batch = pack_batch(rows, pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        packed = model(**model_inputs(batch), use_cache=False).logits  # (2, T, V)
        wrong = model(input_ids=batch["input_ids"], use_cache=False).logits  # positions running on: attends across
        for r, row in enumerate(rows):
            start = 0
            for ex in row:
                n = len(ex.input_ids)
                alone = model(input_ids=torch.tensor([ex.input_ids]), use_cache=False).logits[0]
                torch.testing.assert_close(packed[r, start:start + n], alone, rtol=1e-4, atol=1e-5)
                start += n
    second = len(rows[0][0].input_ids)
    assert not torch.allclose(wrong[0, second:second + 3], packed[0, second:second + 3], atol=1e-3)


def test_packed_gradients_and_per_task_losses_equal_the_padded_ones(model, tokenizer):
    model.train()
    seqs = examples(len(tokenizer), 8, seed=2, n_tasks=3)
    pad = tokenizer.pad_token_id
    padded = step_gradients(model, [pad_batch(seqs[:4], pad), pad_batch(seqs[4:], pad)], n_tasks=3)
    packed = step_gradients(model, [pack_batch([seqs[:3], seqs[3:5]], pad), pack_batch([seqs[5:]], pad)], n_tasks=3)
    assert packed[1].tolist() == padded[1].tolist()  # the same answer tokens and real tokens in the step
    torch.testing.assert_close(packed[2], padded[2], rtol=1e-4, atol=1e-4)  # per-task [loss sum, tokens]
    assert packed[2][:, 1].tolist() == [sum(e.n_answer_tokens - (e.labels[0] != IGNORE) for e in seqs if e.task_id == t)
                                        for t in range(3)]
    for name, g in padded[0].items():
        torch.testing.assert_close(packed[0][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_per_task_sums_take_each_token_task_from_the_token():
    labels = torch.tensor([[IGNORE, 5, 6, IGNORE, 7]])
    loss = torch.tensor([[1.0, 2.0, 0.0, 4.0]])  # position t scores token t+1
    per_token = per_task_sums(loss, labels, torch.tensor([[0, 0, 0, 1, 1]]), n_tasks=2)
    assert per_token.tolist() == [[3.0, 2.0], [4.0, 1.0]]
    per_row = per_task_sums(loss, labels, torch.tensor([1]), n_tasks=2)
    assert per_row.tolist() == [[0.0, 0.0], [7.0, 3.0]]
    assert token_losses(torch.zeros(1, 5, 8), labels)[0].tolist() == pytest.approx([2.0794] * 2 + [0.0, 2.0794], abs=1e-4)


# --- the epoch's packing and the plan -------------------------------------------------------------


def prepared_for(seqs: list[Tokenized], sizes: list[int], counts: tuple[int, ...], pack_len: int | None) -> Prepared:
    splits = [TaskSplit(task(name=f"t{i}", kind="instruction", source="x"), n, [], []) for i, n in enumerate(sizes)]
    return Prepared(splits, seqs, {}, sizes, epoch_counts=counts, pack_len=pack_len)


def test_epoch_rows_are_a_pure_function_of_seed_and_epoch():
    lengths = tuple(random.Random(0).randint(5, 60) for _ in range(50))
    args = ((30, 20), (30, 40), lengths, 128)
    rows = epoch_rows(*args, 0, 0)
    assert epoch_rows.__wrapped__(*args, 0, 0) == rows  # recomputed, not only memoised
    assert epoch_rows(*args, 0, 1) != rows and epoch_rows(*args, 1, 0) != rows
    assert sorted(i for r in rows for i in r) == sorted(mixture_order((30, 20), (30, 40), 0, 0))
    assert all(sum(lengths[i] for i in r) <= 128 for r in rows)


def test_a_drawn_share_can_pack_differently_and_the_plan_takes_the_fewest_rows():
    lengths = tuple(random.Random(1).randint(5, 100) for _ in range(60))
    counts = ((60,), (30,), lengths, 128, 0)
    per_epoch = [len(epoch_rows(*counts, e)) for e in range(6)]
    assert rows_per_epoch(*counts, 6) == min(per_epoch)
    assert rows_per_epoch((60,), (120,), lengths, 128, 0, 6) == len(epoch_rows((60,), (120,), lengths, 128, 0, 0))


def test_packed_steps_partition_the_epoch_across_processes_with_little_padding():
    from multitune.config.schema import TrainConfig

    rng = random.Random(3)
    seqs = [Tokenized([7] * n, [IGNORE] * (n - 2) + [7, 7], i % 2) for i, n in
            enumerate(rng.randint(20, 120) for _ in range(400))]
    prepared = prepared_for(seqs, [200, 200], (200, 200), pack_len=512)
    plan = make_plan(TrainConfig(micro_batch_size=2, grad_accum_steps=2, epochs=1), prepared, seed=0, world_size=2)
    rows = epoch_rows((200, 200), (200, 200), prepared.lengths, 512, 0, 0)
    assert plan.packed and plan.epoch_size == len(rows) and plan.steps_per_epoch == len(rows) // 8
    real = total = answers = 0
    for step in range(plan.total_steps):
        for rank in range(2):
            batches = batches_for_step(prepared, plan, step, 0, rank, 0, "cpu")
            assert [b["input_ids"].shape[0] for b in batches] == [2, 2]
            real += sum(int(real_tokens(b)) for b in batches)
            total += sum(b["input_ids"].numel() for b in batches)
            answers += sum(int(answer_token_count(b["labels"])) for b in batches)
    used = rows[: plan.total_steps * 8]  # each used row once, on one process
    assert real == sum(prepared.lengths[i] for r in used for i in r)
    assert answers == sum(seqs[i].n_answer_tokens for r in used for i in r)
    assert 1 - real / total < 0.05, f"padding {1 - real / total:.1%}"
