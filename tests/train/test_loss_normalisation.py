"""DESIGN.md #3: the step loss is the sum of answer-token losses over all micro-batches divided by the
step's answer tokens, so gradient accumulation 4 x batch 2 equals 1 x batch 8 on uneven padded data."""

import random

import pytest
import torch
from accelerate import Accelerator

from multitune.data.collate import pad_batch
from multitune.data.tokenize import IGNORE, Tokenized
from multitune.loss import per_example_loss
from multitune.train.loop import accumulate_gradients


def uneven_examples(vocab: int, n: int = 8) -> list[Tokenized]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        length = rng.randint(6, 30)
        answer = rng.randint(1, length - 3)  # very different answer lengths per example
        ids = [rng.randrange(10, vocab) for _ in range(length)]
        out.append(Tokenized(ids, [IGNORE] * (length - answer) + ids[-answer:], task_id=i % 2))
    return out


def grads_after(model, accelerator, micro_batches) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    accumulate_gradients(model, accelerator, micro_batches, n_tasks=2)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulation_of_small_batches_equals_one_big_batch(model, tokenizer):
    model.train()
    accelerator = Accelerator(cpu=True)
    examples = uneven_examples(len(tokenizer))
    pad = tokenizer.pad_token_id
    accumulated = grads_after(model, accelerator, [pad_batch(examples[i : i + 2], pad) for i in range(0, 8, 2)])
    one_batch = grads_after(model, accelerator, [pad_batch(examples, pad)])
    assert accumulated.keys() == one_batch.keys() and len(one_batch) > 0
    for name, g in one_batch.items():
        torch.testing.assert_close(accumulated[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_the_gradient_is_that_of_the_mean_over_all_answer_tokens(model, tokenizer):
    model.train()
    accelerator = Accelerator(cpu=True)
    examples = uneven_examples(len(tokenizer))
    batch = pad_batch(examples, tokenizer.pad_token_id)
    got = grads_after(model, accelerator, [pad_batch(examples[:3], tokenizer.pad_token_id),
                                           pad_batch(examples[3:], tokenizer.pad_token_id)])
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    flat = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE)
    flat.backward()  # torch's mean over non-ignored tokens: the reference
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_averaging_micro_batch_means_would_be_wrong(model, tokenizer):
    """The check above can fail: the naive per-micro-batch mean gives another gradient on this data."""
    model.train()
    examples = uneven_examples(len(tokenizer))
    pad = tokenizer.pad_token_id
    model.zero_grad(set_to_none=True)
    for i in range(0, 8, 2):
        b = pad_batch(examples[i : i + 2], pad)
        sums, counts = per_example_loss(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                        b["labels"])
        (sums.sum() / counts.sum() / 4).backward()
    naive = {n: p.grad.clone() for n, p in model.named_parameters()}
    right = grads_after(model, Accelerator(cpu=True), [pad_batch(examples, pad)])
    name = "model.embed_tokens.weight"
    assert not torch.allclose(naive[name], right[name], rtol=1e-3, atol=1e-6)


def test_padding_carries_no_loss(model, tokenizer):
    examples = uneven_examples(len(tokenizer), n=2)
    alone = pad_batch(examples[:1], tokenizer.pad_token_id)
    padded = pad_batch(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        a_sum, a_n = per_example_loss(model(**{k: alone[k] for k in ("input_ids", "attention_mask")}).logits,
                                      alone["labels"])
        p_sum, p_n = per_example_loss(model(**{k: padded[k] for k in ("input_ids", "attention_mask")}).logits,
                                      padded["labels"])
    assert a_n[0] == p_n[0] == examples[0].n_answer_tokens
    assert p_sum[0].item() == pytest.approx(a_sum[0].item(), rel=1e-5)
