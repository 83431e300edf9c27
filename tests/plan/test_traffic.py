"""What each data-parallel layout sends between nodes per step, pinned on Llama 3 8B (3 nodes x 4 GPUs)."""

from __future__ import annotations

import pytest

from multitune.plan.activations import Precision
from multitune.plan.estimate import Setup
from multitune.plan.memory import resolve_targets
from multitune.plan.shapes import llama_shape
from multitune.plan.traffic import gathered_bytes, layouts, network_bytes

LLAMA_8B = llama_shape(4096, 14336, 32, 32, 8, 128256)
BF16 = Precision(act=2, weights=2)


def sent(method: str, micro_batches: int = 8) -> dict[str, float]:
    setup = Setup(method, 16, tuple(resolve_targets(LLAMA_8B, "all-linear")))
    layers, root = gathered_bytes(LLAMA_8B, setup, BF16)
    trainable = LLAMA_8B.total_params if method == "full" else 41_943_040
    grad = 2 if method == "full" else 4
    return {lay.name: network_bytes(lay, 3, micro_batches, layers, root, trainable, grad) for lay in layouts(12, 3)}


def test_fsdp_across_nodes_gathers_the_whole_model_over_the_network_every_micro_batch():
    lora = sent("lora")
    # 16 GB of bf16 weights, gathered twice for the layers and once for the root, 11/12 of it from other
    # processes, for each of 8 micro-batches: about 220 GB a step, against 0.22 GB of HSDP's gradients.
    assert lora["fsdp"] == pytest.approx(8 * 11 / 12 * (2 * 14.13e9 + 2.10e9 + 4 * 41_943_040), rel=1e-3)
    assert lora["hsdp"] == pytest.approx(2 * 2 / 3 * 4 * 41_943_040)
    assert lora["fsdp"] / lora["hsdp"] > 1000
    full = sent("full")
    assert full["hsdp"] == pytest.approx(2 * 2 / 3 * 4 * LLAMA_8B.total_params)  # float32 gradients, once
    assert full["ddp"] == pytest.approx(2 * 11 / 12 * 2 * LLAMA_8B.total_params)  # bf16 gradients, once


def test_qlora_gathers_no_4bit_weight_and_one_node_sends_nothing():
    setup = Setup("qlora", 16, tuple(resolve_targets(LLAMA_8B, "all-linear")))
    layers, root = gathered_bytes(LLAMA_8B, setup, BF16)
    assert layers < 0.4e9 and root == pytest.approx((2 * 128256 + 1) * 4096 * 4)  # float32 embeddings and head
    assert network_bytes(layouts(4, 1)[0], 1, 8, layers, root, 1, 4) == 0.0
