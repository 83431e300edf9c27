"""`multitune export --format gguf`, checked by a reader we did not write: transformers' GGUF loader reads the
file back, and its logits, token ids and chat prompt must match the merged model's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multitune.cli import main
from multitune.errors import UserError
from multitune.export.gguf import check_architecture, llama3_rope_factors, permute_qk, write_gguf
from multitune.export.modelfile import modelfile
from multitune.models.trained import load_run

PROMPTS = [
    [{"role": "system", "content": "Classify the user's text. Reply with the label only."},
     {"role": "user", "content": "Labels: Claim, Not a Claim\n\nText: A tree fell on my roof last night."}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Give the opposite of the word.\n\nhot"}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"},
     {"role": "user", "content": "What's 12 + 345?"}],
]
TEXTS = ["Hello world", "It's 2024-11-28, isn't it?\n\n  Tabs\tand  spaces ", "café, naïve — 東京",
         "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"]


def _read(path):
    """The GGUF read back by transformers' own loader, in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """{type: GGUF path} for f16 and q8_0, and the reference: base + adapter (the merge is checked against it)."""
    out = tmp_path_factory.mktemp("gguf")
    paths = {}
    for type in ("f16", "q8_0"):
        paths[type] = out / type / "model.gguf"
        assert main(["export", str(run_dir), "--format", "gguf", "--output", str(paths[type]), "--type", type]) == 0
    model, tokenizer, _ = load_run(run_dir)
    return paths, model, tokenizer


def _max_logit_diff(reference, model, tokenizer):
    """(largest |logit difference| over PROMPTS, largest |logit|, share of positions with the same top token)."""
    diff, scale, same, total = 0.0, 0.0, 0, 0
    with torch.no_grad():
        for p in PROMPTS:
            ids = torch.tensor([tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True,
                                                              return_dict=True)["input_ids"]])
            want, got = reference(input_ids=ids).logits[0], model(input_ids=ids).logits[0]
            diff, scale = max(diff, float((want - got).abs().max())), max(scale, float(want.abs().max()))
            same, total = same + int((want.argmax(-1) == got.argmax(-1)).sum()), total + want.shape[0]
    return diff, scale, same / total


def test_f16_reads_back_in_transformers_with_the_merged_models_logits_tokens_and_template(exported, capsys):
    paths, reference, tokenizer = exported
    model, read_tokenizer = _read(paths["f16"])
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings is False
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "max_position_embeddings"):
        assert getattr(model.config, key) == getattr(reference.config, key), key
    assert model.config.rms_norm_eps == pytest.approx(reference.config.rms_norm_eps, rel=1e-6)  # stored float32
    diff, scale, agreement = _max_logit_diff(reference, model, tokenizer)
    print(f"f16: largest logit difference {diff:.3g} (largest logit {scale:.3g}), top-1 agreement {agreement:.1%}")
    # f16 keeps 11 significant bits: each weight moves by at most 2^-11 of itself.
    assert diff < 2e-3 * max(1.0, scale) and agreement == 1.0
    with reference.disable_adapter():  # the adapter must matter, or matching logits would prove little
        base_diff, _, _ = _max_logit_diff(reference, model, tokenizer)
    assert base_diff > 100 * diff
    for text in TEXTS:
        assert read_tokenizer(text, add_special_tokens=False)["input_ids"] == \
            tokenizer(text, add_special_tokens=False)["input_ids"], text
        assert read_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"], text
    for p in PROMPTS:
        assert read_tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) == \
            tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
    assert read_tokenizer.bos_token == tokenizer.bos_token and read_tokenizer.eos_token == tokenizer.eos_token


def test_q8_0_is_about_half_the_size_and_its_logit_difference_is_reported_and_bounded(exported):
    paths, reference, tokenizer = exported
    model, _ = _read(paths["q8_0"])
    diff, scale, agreement = _max_logit_diff(reference, model, tokenizer)
    print(f"q8_0: largest logit difference {diff:.3g} (largest logit {scale:.3g}), top-1 agreement {agreement:.1%}")
    # Measured on this run: 0.0065 on logits up to 2.7 (0.24%), every top token the same.
    assert 0 < diff < 2e-2 * max(1.0, scale) and agreement >= 0.95
    assert paths["q8_0"].stat().st_size < 0.7 * paths["f16"].stat().st_size


def test_q_and_k_rows_are_permuted_as_llama_cpp_expects_and_transformers_undoes(exported):
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    paths, reference, _ = exported
    tensors = {t.name: t for t in GGUFReader(paths["f16"]).tensors}
    assert "output.weight" in tensors and "blk.1.ffn_down.weight" in tensors and len(tensors) == 2 + 2 * 9 + 1
    config = reference.config
    q = reference.get_base_model().model.layers[0].self_attn.q_proj
    k = reference.get_base_model().model.layers[0].self_attn.k_proj
    with torch.no_grad():
        merged_k = (k.get_base_layer().weight + k.get_delta_weight("default")).numpy()
    stored_k = np.asarray(tensors["blk.0.attn_k.weight"].data, dtype=np.float32)
    np.testing.assert_allclose(stored_k, permute_qk(merged_k, config.num_key_value_heads), atol=1e-3)
    assert not np.allclose(stored_k, merged_k, atol=1e-3)  # the permutation is not the identity here
    assert q.get_base_layer().weight.shape[0] == config.num_attention_heads * config.head_dim
    w = np.random.default_rng(0).normal(size=(4 * 6, 3)).astype(np.float32)  # 4 heads of dimension 6
    undo = LlamaTensorProcessor({"num_attention_heads": 4, "num_key_value_heads": 4})._reverse_permute_weights
    np.testing.assert_array_equal(undo(permute_qk(w, 4), 4, 4), w)


def test_a_tied_head_is_left_out_and_read_back_tied(exported, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    _, reference, tokenizer = exported
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=1,
                                         tie_word_embeddings=True)).eval()
    written = write_gguf(model, tokenizer, tmp_path / "tied.gguf", "f16")
    assert written.tied_output and written.tensor_count == 2 + 9
    read, _ = _read(tmp_path / "tied.gguf")
    assert read.config.tie_word_embeddings is True
    ids = torch.tensor([tokenizer("Hello world, tied head")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(read(input_ids=ids).logits, model(input_ids=ids).logits, atol=2e-3, rtol=0)


def test_modelfile_names_the_file_the_stop_token_and_the_llama3_template(exported):
    paths, _, tokenizer = exported
    text = (paths["f16"].parent / "Modelfile").read_text()
    assert "FROM ./model.gguf\n" in text and 'PARAMETER stop "<|eot_id|>"' in text
    assert 'TEMPLATE """<|begin_of_text|>{{ range .Messages }}<|start_header_id|>{{ .Role }}' in text
    # the run's two tasks trained with two system prompts: both listed, neither imposed
    assert "SYSTEM" not in text and '"You are a helpful assistant."' in text
    one = modelfile("m.gguf", tokenizer, ["Be brief.", "Be brief."])
    assert one.system == "Be brief." and 'SYSTEM """Be brief."""' in one.text and one.template == "llama3"


def test_modelfile_of_a_chatml_model_stops_at_im_end_and_a_template_it_cannot_match_is_left_to_the_gguf(exported):
    import copy

    _, _, tokenizer = exported
    chatml = copy.deepcopy(tokenizer)
    chatml.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    chatml.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
                            "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
                            "{{ '<|im_start|>assistant\n' }}{% endif %}")
    made = modelfile("m.gguf", chatml, ["Be brief."])
    assert made.template == "chatml" and made.stop == ["<|im_end|>", "<|eot_id|>"]
    chatml.bos_token = "<|im_start|>"  # as SmolLM2's: every rendering starts with it, and ChatML writes it anyway
    assert modelfile("m.gguf", chatml, ["Be brief."]).template == "chatml"
    chatml.chat_template = chatml.chat_template.replace("'\n' }}{% endfor", "'\n\n' }}{% endfor")
    made = modelfile("m.gguf", chatml, ["Be brief."])
    assert made.template is None and "TEMPLATE" not in made.text.replace("# No TEMPLATE", "")


def test_other_architectures_and_existing_outputs_are_refused(run_dir, tmp_path):
    from transformers import MistralConfig, Qwen2Config

    for config, name in ((Qwen2Config(), "qwen2"), (MistralConfig(), "mistral")):
        with pytest.raises(UserError, match=f"Llama architecture only; this model is '{name}'"):
            check_architecture(config)
    (tmp_path / "there.gguf").write_text("keep me")
    assert main(["export", str(run_dir), "--format", "gguf", "--output", str(tmp_path / "there.gguf")]) == 2
    with pytest.raises(UserError, match="should end in .gguf"):
        from multitune.export.to_gguf import export_gguf

        export_gguf(run_dir, tmp_path / "model.bin")
    assert (tmp_path / "there.gguf").read_text() == "keep me"


def test_push_gguf_uploads_the_gguf_and_modelfile_beside_the_adapter_and_the_card_says_how_to_run_them(
        run_dir, tmp_path, monkeypatch):
    import shutil

    from gguf import GGUFReader

    from export.fake_hub import FakeHub
    from multitune.export import hub

    client = FakeHub()
    monkeypatch.setenv("HF_TOKEN", "hf_FAKEtoken0123456789abcdefSECRET")
    monkeypatch.setattr(hub, "default_client", lambda get_token=None: client)
    run = shutil.copytree(run_dir, tmp_path / "run")
    assert main(["push", str(run), "--repo-id", "alice/tiny-demo", "--gguf", "q8_0"]) == 0
    (files,) = client.uploads
    assert {"adapter_model.safetensors", "tiny-demo-Q8_0.gguf", "Modelfile", "README.md"} <= set(files)
    assert not any(name.startswith(".") for name in files)  # no temporary merge left in the upload
    assert "FROM ./tiny-demo-Q8_0.gguf\n" in files["Modelfile"].decode()
    (tmp_path / "up.gguf").write_bytes(files["tiny-demo-Q8_0.gguf"])
    assert GGUFReader(tmp_path / "up.gguf").get_tensor(0).tensor_type.name in ("Q8_0", "F32")
    card = files["README.md"].decode()
    assert "## Run it with llama.cpp or Ollama" in card and "llama-cli -m tiny-demo/tiny-demo-Q8_0.gguf" in card
    assert "ollama create tiny-demo -f Modelfile" in card


def test_llama3_rope_scaling_becomes_llama_cpps_frequency_divisors():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=131072,
                         rope_parameters=rope)
    check_architecture(config)  # accepted
    factors = llama3_rope_factors(config)
    base = 1.0 / (500000.0 ** (torch.arange(0, 64, 2, dtype=torch.int64).float() / 64))  # head_dim 64
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    assert factors.shape == (32,) and factors[0] == 1.0 and factors[-1] == 32.0  # short waves kept, long divided
    np.testing.assert_allclose(base.numpy() / factors, scaled.numpy(), rtol=1e-5)
    config.rope_parameters = {**rope, "rope_type": "yarn"}
    with pytest.raises(UserError, match="rope scaling 'yarn'"):
        check_architecture(config)


def test_vocab_pads_unused_rows_marks_added_tokens_and_refuses_an_unknown_pre_tokenizer(exported):
    import copy

    from tokenizers import pre_tokenizers

    from multitune.export.gguf_vocab import CONTROL, UNUSED, USER_DEFINED, pre_tokenizer_name, vocab_fields

    _, _, tokenizer = exported
    tok = copy.deepcopy(tokenizer)
    tok.add_tokens(["<think>"])  # an added token that is not special
    size = len(tok) + 2  # an embedding with two rows no token uses
    f = vocab_fields(tok, size)
    assert f["pre"] == "llama-bpe" and f["add_bos"] is False and len(f["tokens"]) == size
    assert f["tokens"][-2:] == [f"[PAD{size - 2}]", f"[PAD{size - 1}]"] and f["token_types"][-2:] == [UNUSED] * 2
    assert f["token_types"][tok.convert_tokens_to_ids("<think>")] == USER_DEFINED
    assert f["token_types"][tok.convert_tokens_to_ids("<|eot_id|>")] == CONTROL
    assert f["merges"][0].count(" ") == 1 and f["eos_token_id"] == tok.convert_tokens_to_ids("<|eot_id|>")
    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                    {"type": "ByteLevel", "add_prefix_space": False,
                                                     "use_regex": True}]}
    assert pre_tokenizer_name(smollm) == "smollm"
    assert pre_tokenizer_name({"type": "Whitespace"}) is None
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(UserError, match="knows no pre-tokenizer"):
        vocab_fields(tok, size)
