"""The topology a launch asks for, read from accelerate's own environment variables, and what multitune's
FSDP path refuses (all problems at once). Sharding itself runs in tests/train/test_fsdp.py."""

from __future__ import annotations

import os

import pytest

from multitune.errors import UserError
from multitune.train import shard


def test_accelerate_config_variables_give_fsdp_or_hsdp():
    fsdp = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "false",
            "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}
    t = shard.topology(4, env=fsdp)
    assert (t.fsdp, t.replicate, t.shard, t.reshard_after_forward, t.layer_classes, t.efficient_loading) == \
        (True, 1, 4, False, ("LlamaDecoderLayer",), True)
    hsdp = {**fsdp, "ACCELERATE_USE_PARALLELISM_CONFIG": "true", "PARALLELISM_CONFIG_DP_REPLICATE_SIZE": "3",
            "PARALLELISM_CONFIG_DP_SHARD_SIZE": "4"}
    assert (shard.topology(12, env=hsdp).replicate, shard.topology(12, env=hsdp).shard) == (3, 4)
    assert shard.topology(12, env={**hsdp, "PARALLELISM_CONFIG_DP_REPLICATE_SIZE": ""}).replicate == 3
    assert not shard.topology(4, env={"PARALLELISM_CONFIG_DP_SHARD_SIZE": "4"}).fsdp  # no FSDP asked


def test_what_the_fsdp_path_cannot_run_is_refused_with_every_reason():
    env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_OFFLOAD_PARAMS": "true",
           "FSDP_ACTIVATION_CHECKPOINTING": "true", "PARALLELISM_CONFIG_DP_REPLICATE_SIZE": "3",
           "PARALLELISM_CONFIG_DP_SHARD_SIZE": "4"}
    with pytest.raises(UserError) as e:
        shard.topology(8, "fp16", env=env)
    text = str(e.value)
    for reason in ("train.mixed_precision=fp16", "FSDP_VERSION=1", "FSDP_OFFLOAD_PARAMS=true",
                   "train.gradient_checkpointing=true", "3 copies x 4 shards"):
        assert reason in text, reason
    with pytest.raises(UserError, match="1 copies x 4 shards .* is not the 6 processes"):
        shard.topology(6, env={"ACCELERATE_USE_FSDP": "true", "PARALLELISM_CONFIG_DP_SHARD_SIZE": "4"})


def test_accelerate_is_shown_plain_data_parallelism_and_the_environment_comes_back(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.delenv("ACCELERATE_USE_PARALLELISM_CONFIG", raising=False)
    with shard.hidden_from_accelerate():
        assert os.environ["ACCELERATE_USE_FSDP"] == "false"
    assert os.environ["ACCELERATE_USE_FSDP"] == "true" and "ACCELERATE_USE_PARALLELISM_CONFIG" not in os.environ


def test_one_unit_per_decoder_layer(model):
    assert [type(m).__name__ for m in shard.decoder_layers(model)] == ["LlamaDecoderLayer"] * 2
    with pytest.raises(UserError, match="found no decoder layer"):
        shard.decoder_layers(model, ("MistralDecoderLayer",))
    assert not shard.is_sharded(model) and shard.shard_model(model, shard.Topology(), None) is model
