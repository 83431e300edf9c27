"""The estimator's maths pinned to exact values, and a shape read off a meta-device model."""

from __future__ import annotations

import pytest

from multitune.errors import UserError
from multitune.plan.activations import MicroBatch, Precision, activation_bytes, layer_saved_bytes
from multitune.plan.budget import Budget, largest_fitting
from multitune.plan.estimate import Setup, budget
from multitune.plan.flops import attended_context, flops_per_token
from multitune.plan.gpus import find_gpu
from multitune.plan.memory import nf4_bytes, resolve_targets, trainable_params, weight_bytes
from multitune.plan.shapes import from_hf_config, llama_shape

LLAMA_8B = llama_shape(4096, 14336, 32, 32, 8, 128256)


def test_meta_device_shape_equals_the_hand_written_llama():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=400, tie_word_embeddings=False)
    meta = from_hf_config(config)
    hand = llama_shape(64, 128, 2, 4, 2, 400)
    assert meta.total_params == hand.total_params == 2 * 400 * 64 + 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128) + 5 * 64
    assert {lin.name: lin.params for lin in meta.linears} == {lin.name: lin.params for lin in hand.linears}
    assert meta.other_params == hand.other_params == 5 * 64  # 2 norms per layer and the final one


def test_llama_8b_counts_match_the_published_ones():
    assert LLAMA_8B.total_params == 8_030_261_248
    t = trainable_params(LLAMA_8B, "lora", 16, resolve_targets(LLAMA_8B, "all-linear"))
    assert t.lora == 41_943_040
    dora = trainable_params(LLAMA_8B, "dora", 16, resolve_targets(LLAMA_8B, "attention"))
    assert dora.dora == 32 * (4096 + 1024 + 1024 + 4096)
    saved = trainable_params(LLAMA_8B, "lora", 8, ["q_proj"], ["lm_head"])
    assert saved.saved_modules == 128256 * 4096 and saved.lora == 32 * 8 * (4096 + 4096)


def test_nf4_with_double_quantisation_is_about_4_13_bits_per_weight():
    assert nf4_bytes(64 * 256) == 8192 + 256 + 4
    assert nf4_bytes(64 * 256, double_quant=False) == 8192 + 1024
    w = weight_bytes(LLAMA_8B, "qlora", 2)
    assert w["float32"] == (128256 * 4096 * 2 + 65 * 4096) * 4  # embeddings, head, norms cast up by peft
    assert w["nf4"] == pytest.approx(LLAMA_8B.linear_params * (0.5 + 1 / 64 + 4 / 16384))


def test_layer_activations_count_each_kept_tensor():
    s = llama_shape(8, 16, 1, 2, 1, 10)  # h=8, i=16, 2 heads of 4, one kv head (repeated under a mask)
    fp32 = Precision(act=4, weights=4)
    frozen = layer_saved_bytes(s, fp32, [], [])
    # norms' fp32 inputs 2*4*8; attention q, k, v (repeated to 8), out 4*(8+16+8); lse 4*2; SwiGLU 3*4*16
    assert frozen == 72 + 128 + 8 + 192
    lora = layer_saved_bytes(s, fp32, [], ["q_proj", "down_proj"])
    assert lora - frozen == 4 * 8 + 4 * 16  # the inputs of q/k/v and of down are kept once
    bf16 = layer_saved_bytes(s, Precision(act=2, weights=2), [], ["q_proj"])
    bf16_frozen = layer_saved_bytes(s, Precision(act=2, weights=2), [], [])
    assert bf16 - bf16_frozen == 2 * 8 + 4 * 8  # its input, and peft's float32 copy for the adapter


def test_activations_scale_with_positions_and_checkpointing_keeps_one_input_per_layer():
    s = llama_shape(8, 16, 3, 2, 1, 10)
    p = Precision(act=4, weights=4)
    per = layer_saved_bytes(s, p, [], ["q_proj"])
    a = activation_bytes(s, p, MicroBatch(2, 5, 3), per)
    assert a["layers"] == 10 * 3 * per and a["logits"] == 3 * 10 * 12
    ck = activation_bytes(s, p, MicroBatch(2, 5, 3), per, checkpointing=True)
    assert ck["layers"] == 10 * (3 * 4 * 8 + per)


def test_peak_is_the_larger_of_backward_and_step_and_fsdp_shards_the_static_part():
    b = Budget(weights={"bf16": 100.0}, trainable=10.0, gradients=10.0, optimizer=20.0,
               activations={"layers": 50.0}, step_temporary=10.0)
    assert (b.backward_peak, b.step_peak, b.peak) == (180.0, 150.0, 180.0)
    sharded = Budget(weights={"bf16": 100.0}, trainable=10.0, gradients=10.0, optimizer=20.0,
                     activations={"layers": 50.0}, shards=2, gather=5.0)
    assert sharded.backward_peak == 65.0 + 5.0 + 50.0
    assert largest_fitting(180.0, lambda n: 130.0 + 10.0 * n, 16) == 5


def test_a_whole_budget_for_the_8b_reference_in_bf16():
    setup = Setup("lora", 16, tuple(resolve_targets(LLAMA_8B, "all-linear")), on_gpu=True)
    prec = Precision(act=2, weights=2, autocast=True)
    b = budget(LLAMA_8B, setup, prec, MicroBatch(2, 2048, 700))
    assert b.weights == {"bfloat16": 8_030_261_248 * 2}
    assert b.trainable == b.gradients == 41_943_040 * 4 and b.optimizer == 2 * b.gradients
    assert 30 * 1024**3 < b.peak < 80 * 1024**3


def test_flops_per_token_frozen_base_is_about_4n_trained_6n():
    lora = flops_per_token(LLAMA_8B, False, 41_943_040, 0.0, 0.0)
    full = flops_per_token(LLAMA_8B, True, 0, 0.0, 0.0)
    assert lora.body == 4 * LLAMA_8B.linear_params + 6 * 41_943_040
    assert full.body == 6 * LLAMA_8B.linear_params
    att = flops_per_token(LLAMA_8B, True, 0, 1024.5, 0.0)
    assert att.attention == 3 * 4 * 32 * 4096 * 1024.5
    assert attended_context([(2, 2048)]) == 2048.0  # masked kernels compute the whole row


def test_gpus_by_name_numbers_and_unknown_names_list_the_table():
    assert find_gpu("A100-80GB").memory_gib == 80.0 and find_gpu("h100").tflops == 989.0
    g = find_gpu("80GB,312TF")
    assert (g.memory_gib, g.tflops) == (80.0, 312.0)
    with pytest.raises(UserError) as e:
        find_gpu("B9000")
    assert "A100-80GB" in str(e.value) and "RTX4090" in str(e.value)


def test_cuda_device_names_find_their_table_entry():
    from multitune.plan.target import _match

    assert _match("NVIDIA H100 80GB HBM3", 79.6).name == "H100-80GB"
    assert _match("NVIDIA H100 PCIe", 79.6).name == "H100-PCIe"
    assert _match("NVIDIA A100-SXM4-40GB", 39.5).name == "A100-40GB"
    assert _match("NVIDIA GeForce RTX 4090", 23.6).name == "RTX4090"
    assert _match("NVIDIA L40S", 44.4).name == "L40S" and _match("NVIDIA L4", 22.0).name == "L4"
    assert _match("Some Future Accelerator", 99.0) is None


def test_optimizer_step_traffic_counts_sixteen_passes_over_the_trainable_weights():
    from multitune.plan.flops import update_bytes

    assert update_bytes(1_000, 4) == 64_000.0 and update_bytes(1_000, 2) == 32_000.0


@pytest.mark.parametrize("adapter", [
    {"method": "ia3"}, {"method": "ia3", "target_modules": ["k_proj", "v_proj", "down_proj"]},
    {"method": "prompt_tuning", "num_virtual_tokens": 7}, {"method": "prefix_tuning", "num_virtual_tokens": 7},
    {"method": "lora", "r": 4, "lora_init": "olora"},
])
def test_trainable_counts_of_each_method_equal_peft_on_the_model(tiny_dir, adapter):
    from transformers import AutoModelForCausalLM

    from multitune.config.schema import AdapterConfig
    from multitune.models import adapters

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    shape = from_hf_config(model.config)
    cfg = AdapterConfig(**adapter)
    targets = [] if cfg.virtual_tokens else resolve_targets(shape, cfg.target_modules)
    want = adapters.count_parameters(adapters.attach(model, cfg))[0]
    assert trainable_params(shape, cfg.method, cfg.r, targets, virtual_tokens=cfg.virtual_tokens).total == want


def test_ia3_keeps_attention_outputs_and_mlp_inputs_and_virtual_tokens_add_keys_and_mask_columns():
    s = llama_shape(8, 16, 1, 2, 1, 10)
    fp32, bf16 = Precision(act=4, weights=4), Precision(act=2, weights=2)
    frozen = layer_saved_bytes(s, fp32, [], [])
    # k_proj's output (4 wide), and down_proj's input (16): (IA)^3 multiplies them by its scales
    assert layer_saved_bytes(s, fp32, [], ["k_proj", "down_proj"], ia3=True) - frozen == 4 * 4 + 4 * 16
    bf16_frozen = layer_saved_bytes(s, bf16, [], [])
    assert layer_saved_bytes(s, bf16, [], ["down_proj"], ia3=True) - bf16_frozen == 2 * 16 + 4 * 16  # + the fp32 copy
    mb = MicroBatch(rows=2, width=10, logit_positions=3)
    plain, virtual = (activation_bytes(s, fp32, mb, frozen, virtual_tokens=p) for p in (0, 5))
    assert virtual["layers"] - plain["layers"] == 2 * 5 * 1 * 2 * 8 * 4  # rows x P x layers x (k, v) x heads' width
    assert virtual["attention_masks"] - plain["attention_masks"] == 2 * 10 * 5 * 4
    cpu = Setup("prompt_tuning", 0, (), virtual_tokens=5)
    assert budget(s, cpu, fp32, mb).retained == 0.0 < budget(s, Setup("lora", 4, ("q_proj",)), fp32, mb).retained
