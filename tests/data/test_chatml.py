"""The data path on a real chat template: SmolLM2's ChatML (`<|im_start|>` / `<|im_end|>`, a newline after
every turn, a default system prompt of its own), next to the tiny model's Llama-3-style template."""

from __future__ import annotations

import pytest

from multitune.config.schema import ModelConfig
from multitune.data.tokenize import (
    IGNORE,
    answer_ids,
    encode_segments,
    end_of_turn_id,
    fit_length,
    last_answer_start,
    prompt_ids,
    segments,
)
from multitune.models import load
from multitune.tasks.base import chat

SMOLLM_DEFAULT = "You are a helpful AI assistant named SmolLM"


def trained_text(tokenizer, messages) -> str:
    tok = encode_segments(tokenizer, segments(tokenizer, messages), task_id=0)
    assert all(lab in (IGNORE, i) for i, lab in zip(tok.input_ids, tok.labels, strict=True))
    return tokenizer.decode([i for i, lab in zip(tok.input_ids, tok.labels, strict=True) if lab != IGNORE])


def test_the_end_of_turn_token_is_read_off_the_template(smollm2_tokenizer, tokenizer):
    assert smollm2_tokenizer.convert_ids_to_tokens(end_of_turn_id(smollm2_tokenizer)) == "<|im_end|>"
    assert tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer)) == "<|eot_id|>"


def test_only_the_answer_and_im_end_are_trained_not_the_newline_after_it(smollm2_tokenizer):
    messages = chat("Classify.", "Text: I am still waiting on my card?", "card_arrival")
    tok = encode_segments(smollm2_tokenizer, segments(smollm2_tokenizer, messages), task_id=0)
    assert trained_text(smollm2_tokenizer, messages) == "card_arrival<|im_end|>"
    rendered = smollm2_tokenizer.apply_chat_template(list(messages), tokenize=False)
    assert rendered.endswith("<|im_end|>\n") and smollm2_tokenizer.decode(tok.input_ids) == rendered
    assert tok.labels[-1] == IGNORE and tok.labels[-2] == end_of_turn_id(smollm2_tokenizer)


def test_a_multi_turn_chat_trains_every_assistant_turn_and_nothing_else(smollm2_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye"},
    ]
    assert trained_text(smollm2_tokenizer, messages) == "Hello there<|im_end|>Goodbye<|im_end|>"


def test_prompt_and_answer_ids_concatenate_to_the_training_example(smollm2_tokenizer):
    messages = chat("Classify.", "Text: where is my card", "card_arrival")
    tok = encode_segments(smollm2_tokenizer, segments(smollm2_tokenizer, messages), task_id=0)
    prompt = prompt_ids(smollm2_tokenizer, messages[:-1])
    answer = answer_ids(smollm2_tokenizer, messages[:-1], "card_arrival")
    assert tok.input_ids[: len(prompt) + len(answer)] == prompt + answer
    assert [x for x in tok.labels if x != IGNORE] == answer
    assert last_answer_start(tok.labels) == len(prompt)


def test_truncation_keeps_the_answer_when_an_untrained_newline_follows_it(smollm2_tokenizer):
    messages = chat("Classify.", "Text: " + "very long complaint " * 30, "card_arrival")
    tok = encode_segments(smollm2_tokenizer, segments(smollm2_tokenizer, messages), task_id=0)
    fitted = fit_length(tok, 40, "truncate", where="test")
    assert fitted is not None and len(fitted.input_ids) == 40
    assert [x for x in fitted.labels if x != IGNORE] == [x for x in tok.labels if x != IGNORE]


@pytest.mark.parametrize("policy", ["keep", "suppress"])
def test_the_templates_default_system_prompt_is_kept_or_suppressed_as_configured(smollm2_dir, policy):
    tokenizer = load.load_tokenizer(str(smollm2_dir), ModelConfig(name=str(smollm2_dir), template_system_prompt=policy))
    no_system = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    prompt = tokenizer.decode(prompt_ids(tokenizer, no_system[:1]))
    if policy == "keep":
        assert prompt.startswith(f"<|im_start|>system\n{SMOLLM_DEFAULT}")
    else:
        assert prompt == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    # A conversation with its own system prompt renders the same either way, and trains the same tokens.
    with_system = [{"role": "system", "content": "Be brief."}, *no_system]
    assert tokenizer.apply_chat_template(with_system, tokenize=False).startswith("<|im_start|>system\nBe brief.")
    assert trained_text(tokenizer, no_system) == "Hello<|im_end|>"


def test_the_suppressing_template_survives_a_save_and_is_not_added_twice(smollm2_dir, tmp_path):
    cfg = ModelConfig(name=str(smollm2_dir), template_system_prompt="suppress")
    tokenizer = load.load_tokenizer(str(smollm2_dir), cfg)
    tokenizer.save_pretrained(tmp_path)
    again = load.load_tokenizer(str(tmp_path), cfg)
    assert again.chat_template == tokenizer.chat_template
    assert again.chat_template.count(load.SUPPRESS_DEFAULT_SYSTEM) == 1
