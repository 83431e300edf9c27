import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from multitune.models import tiny


def test_builds_a_llama_with_grouped_query_attention_loadable_from_its_folder(tiny_dir, small_tiny_cfg):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert isinstance(model, LlamaForCausalLM)
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers) == (small_tiny_cfg.hidden_size, small_tiny_cfg.num_layers)
    assert c.num_key_value_heads < c.num_attention_heads  # GQA
    assert c.hidden_act == "silu" and c.model_type == "llama"  # SwiGLU MLP, RMSNorm, RoPE come with it
    assert model.generation_config.eos_token_id[0] == c.eos_token_id


def test_tokenizer_has_a_llama3_style_chat_template(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    text = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], tokenize=False,
        add_generation_prompt=True)
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte-level: lossless round trip
    assert tok.convert_tokens_to_ids("<|eot_id|>") == tok.eos_token_id


def test_newlines_tokenise_the_same_with_or_without_an_answer_after_them(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    head = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    alone = tok(head, add_special_tokens=False)["input_ids"]
    with_answer = tok(head + "Claim", add_special_tokens=False)["input_ids"]
    assert with_answer[: len(alone)] == alone


def test_the_build_is_cached_by_what_went_into_it(small_tiny_cfg, demo_conversations, tiny_dir):
    t = time.perf_counter()
    again = tiny.build_or_load(small_tiny_cfg, demo_conversations, seed=0)
    assert again == tiny_dir and time.perf_counter() - t < 1.0  # found, not rebuilt
    other = tiny.build_or_load(small_tiny_cfg, demo_conversations[:50], seed=0)
    assert other != tiny_dir


def test_pretraining_lowers_the_language_model_loss(small_tiny_cfg, demo_conversations):
    texts = tiny._user_texts(demo_conversations)
    tok = tiny.train_tokenizer(small_tiny_cfg.vocab_size, tiny._all_texts(demo_conversations))
    model = tiny.init_model(small_tiny_cfg, tok, seed=0)
    ids = torch.tensor([tok(texts[0], add_special_tokens=False)["input_ids"]])
    before = model(input_ids=ids, labels=ids).loss.item()
    tiny.pretrain(model, tok, texts, small_tiny_cfg.model_copy(update={"pretrain_steps": 30}), seed=0)
    with torch.no_grad():
        after = model(input_ids=ids, labels=ids).loss.item()
    assert after < before - 1.0
