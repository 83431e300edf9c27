"""The PEFT methods beyond LoRA, each at the tiny shape: what peft reloads equals what trained, virtual tokens
(prompt and prefix tuning) give the same numbers in every batch layout, scoring and generation, and
merging works or is refused."""

from __future__ import annotations

import json

import pytest
import torch

from export.finished import adapter_run
from multitune.config import validate
from multitune.config.schema import AdapterConfig
from multitune.data.collate import pad_batch
from multitune.data.packing import pack_batch
from multitune.data.prefix import shared_prefix_batch
from multitune.data.tokenize import IGNORE, Tokenized
from multitune.errors import UserError
from multitune.models import adapters, attention

METHODS = {
    "prompt_tuning": {"method": "prompt_tuning", "num_virtual_tokens": 5},
    "prefix_tuning": {"method": "prefix_tuning", "num_virtual_tokens": 5},
    "ia3": {"method": "ia3"},
    "pissa": {"method": "lora", "r": 4, "lora_init": "pissa", "dropout": 0.0},
    "olora_rslora": {"method": "lora", "r": 4, "lora_init": "olora", "use_rslora": True, "dropout": 0.0},
    "loraplus": {"method": "lora", "r": 4, "loraplus_lr_ratio": 16, "dropout": 0.0},
}
VIRTUAL = ["prompt_tuning", "prefix_tuning"]


def trained(tiny_dir, keys: dict, attn: str = "sdpa", seed: int = 0):
    """The tiny base with the method attached and its trainable weights moved off their start (as training
    would), and the start PiSSA / OLoRA conversion needs."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AdapterConfig(**keys)
    model = adapters.attach(AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation=attn), cfg)
    initial = adapters.initial_weights(model, cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
    return model, initial


def examples(vocab: int, n: int, seed: int) -> list[Tokenized]:
    """Examples sharing a 10-token start (so shared-prefix rows share it), answers of 1-3 tokens."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(5, vocab, (10,), generator=g).tolist()
    out = []
    for i in range(n):
        body = torch.randint(5, vocab, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
        answer = torch.randint(5, vocab, (1 + i % 3,), generator=g).tolist()
        ids = start + body + answer
        out.append(Tokenized(ids, [IGNORE] * (len(ids) - len(answer)) + answer, i % 2))
    return out


@pytest.mark.parametrize("name", list(METHODS))
def test_the_saved_adapter_reloads_in_peft_with_the_trained_models_logits(tiny_dir, tokenizer, tmp_path, name):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, initial = trained(tiny_dir, METHODS[name])
    model.eval()
    ids = torch.randint(5, len(tokenizer), (3, 14), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # right padding, as training pads
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).logits
    adapters.save_final(model, tokenizer, tmp_path, adapters.gather_for_saving(model, trainable_only=True), initial)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(tmp_path)).eval()
    with torch.no_grad():
        theirs = reloaded(input_ids=ids, attention_mask=mask).logits
    theirs = theirs[:, theirs.shape[1] - ids.shape[1]:]  # peft returns prompt tuning's virtual positions too
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], rtol=1e-4, atol=1e-4)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    if "lora_init" in METHODS[name]:  # converted for the original base: rank 2r, the same scale
        assert config["r"] == 8 and config["init_lora_weights"] is True


@pytest.mark.parametrize("name", VIRTUAL)
def test_virtual_tokens_give_the_same_step_in_padded_shared_prefix_and_packed_rows(tiny_dir, tokenizer, name):
    from data.data_helpers import step_gradients

    model, _ = trained(tiny_dir, METHODS[name])
    model.train()
    seqs, pad = examples(len(tokenizer), 8, seed=3), tokenizer.pad_token_id
    mask = attention.select_for_shared_prefix(model, virtual_tokens=model.n_virtual)  # dense: no block holds them
    padded = step_gradients(model, [pad_batch(seqs[:4], pad), pad_batch(seqs[4:], pad)], n_tasks=2)
    layouts = {
        "shared": [shared_prefix_batch(seqs[:4], pad, 1024, mask), shared_prefix_batch(seqs[4:], pad, 1024, mask)],
        "packed": [pack_batch([seqs[:2], seqs[2:4]], pad), pack_batch([seqs[4:6], seqs[6:]], pad)],
    }
    assert padded[0], "the virtual tokens must get a gradient"
    for layout, batches in layouts.items():
        got = step_gradients(model, batches, n_tasks=2)
        torch.testing.assert_close(got[2], padded[2], rtol=1e-4, atol=1e-4, msg=layout)  # per-task losses
        for param, g in padded[0].items():
            torch.testing.assert_close(got[0][param], g, rtol=1e-4, atol=1e-6, msg=f"{layout} {param}")


@pytest.mark.parametrize("name", VIRTUAL)
def test_scoring_and_search_with_virtual_tokens_equal_a_full_pass_per_candidate(tiny_dir, name):
    from multitune.eval.scoring import CandidateTrie
    from multitune.eval.search import score_batch, search_batch

    model, _ = trained(tiny_dir, METHODS[name])
    model.eval()
    prompts = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 9], [1, 2, 3, 7, 8, 9, 10, 11]]
    cands = [[12], [30, 31], [7, 8, 9, 10], [30, 31, 4]]
    trie = CandidateTrie.build(cands)
    for tokens_per_pass in (512, 4):  # every row in one pass; rows and rounds over several
        scored = score_batch(model, prompts, [trie] * 3, tokens_per_pass)
        found = search_batch(model, prompts, [trie] * 3, [1, 2, 0], tokens_per_pass=tokens_per_pass)
        for prompt, s, f in zip(prompts, scored, found, strict=True):
            want = torch.tensor([brute_force(model, prompt, c) for c in cands])
            torch.testing.assert_close(s.logprobs, want, rtol=1e-4, atol=1e-4)
            assert int(f.logprobs.argmax()) == int(want.argmax())


@pytest.mark.parametrize("name", VIRTUAL)
def test_generation_with_virtual_tokens_is_greedy_over_peft_logits(tiny_dir, tokenizer, tmp_path, name):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from multitune.eval.generate import left_pad

    model, _ = trained(tiny_dir, METHODS[name])
    model.eval()
    adapters.save_final(model, tokenizer, tmp_path, adapters.gather_for_saving(model, trainable_only=True))
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(tmp_path)).eval()
    prompts = [[1, 7, 9, 11, 40], [1, 8, 30]]
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
        for row, prompt in enumerate(prompts):
            seq = list(prompt)
            for _ in range(6):  # greedy by full forwards of peft's own model, no cache, no padding
                seq.append(int(reference(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
            assert out[row, ids.shape[1]:].tolist() == seq[len(prompt):]


def brute_force(model, prompt: list[int], candidate: list[int]) -> float:
    """log P(candidate | prompt) from one full forward of prompt + candidate."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + candidate])).logits[0].float(), -1)
    return sum(logp[len(prompt) - 1 + j, tok].item() for j, tok in enumerate(candidate))


@pytest.mark.parametrize("name", ["ia3", "pissa"])
def test_weight_adapters_merge_with_equal_logits(tiny_dir, tokenizer, tmp_path, name):
    from multitune.export.merge import merge_run

    result = merge_run(adapter_run(tmp_path / "run", tiny_dir, tokenizer, METHODS[name]), tmp_path / "merged")
    assert result.max_abs_diff <= result.tolerance and result.top1_agreement == 1.0


@pytest.mark.parametrize("name", VIRTUAL)
def test_virtual_token_adapters_are_refused_by_merge_with_the_way_out(tiny_dir, tokenizer, tmp_path, name):
    from multitune.export.merge import merge_run

    with pytest.raises(UserError, match="virtual tokens") as e:
        merge_run(adapter_run(tmp_path / "run", tiny_dir, tokenizer, METHODS[name]), tmp_path / "merged")
    assert "multitune serve" in e.value.fix and not (tmp_path / "merged").exists()


def test_loraplus_gives_b_matrices_the_ratio_of_the_learning_rate(tiny_dir):
    from multitune.config.schema import TrainConfig
    from multitune.train.optim import build_optimizer, build_scheduler

    model, _ = trained(tiny_dir, METHODS["loraplus"])
    opt = build_optimizer(model, TrainConfig(learning_rate=1e-3, warmup_ratio=0.0), b_lr_ratio=16)
    names = {id(p): n for n, p in model.named_parameters()}
    rates = {".lora_B." in names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    assert rates == {False: 1e-3, True: 1.6e-2} and opt.param_groups[0]["lr"] == 1e-3
    sched = build_scheduler(opt, TrainConfig(learning_rate=1e-3, warmup_ratio=0.0, lr_scheduler="linear"), 4)
    opt.step()
    sched.step()
    assert [round(lr / 1e-3, 6) for lr in sched.get_last_lr()] == [0.75, 12.0]  # the schedule scales both


def test_method_switches_are_refused_where_they_do_not_apply():
    base = {"tasks": [{"name": "t", "kind": "classification", "source": "x.jsonl"}]}
    refusals = {
        "use_rslora applies to lora": {"adapter": {"method": "ia3", "use_rslora": True}},
        "lora_init=pissa applies to method lora": {"adapter": {"method": "dora", "lora_init": "pissa"}},
        "loraplus_lr_ratio": {"adapter": {"method": "prompt_tuning", "loraplus_lr_ratio": 16}},
        "modules_to_save does not apply to prefix_tuning": {"adapter": {"method": "prefix_tuning",
                                                                         "modules_to_save": ["lm_head"]}},
        "set train.gradient_checkpointing false": {"adapter": {"method": "prefix_tuning"},
                                                    "train": {"gradient_checkpointing": True}},
        "use model.attn_implementation=sdpa": {"adapter": {"method": "prompt_tuning"},
                                               "model": {"attn_implementation": "flash_attention_2"}},
    }
    for message, sections in refusals.items():
        with pytest.raises(UserError, match=message):
            validate({**base, **sections})
    # Sizes a method does not read are accepted, so one config can sweep adapter.method.
    assert validate({**base, "adapter": {"method": "ia3", "r": 64, "num_virtual_tokens": 8,
                                         "prompt_init_text": "x"}}).adapter.virtual_tokens == 0
    assert validate({**base, "adapter": {"method": "prefix_tuning", "r": 64}}).adapter.virtual_tokens == 20


@pytest.mark.parametrize("name", VIRTUAL)
def test_prompt_init_text_starts_the_run_as_the_base_reading_the_text_first(tiny_dir, tokenizer, name):
    from transformers import AutoModelForCausalLM

    text, p = "Classify the text", 6
    model = adapters.attach(AutoModelForCausalLM.from_pretrained(tiny_dir),
                            AdapterConfig(method=name, num_virtual_tokens=p, prompt_init_text=text)).eval()
    ids = tokenizer(text, add_special_tokens=name == "prompt_tuning")["input_ids"]  # as peft tokenises it
    virtual = [ids[i % len(ids)] for i in range(p)]
    x = [1, 7, 9, 11, 40, 3]
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    with torch.no_grad():
        want = base(input_ids=torch.tensor([virtual + x])).logits[0, p:]
        got = model(input_ids=torch.tensor([x])).logits[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
