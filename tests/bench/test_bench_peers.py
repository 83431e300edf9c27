"""bench/peers/compare.py (issue 15): the FLOP count behind its MFU pinned to hand-computed values, and the
whole benchmark at a toy size (tiny model, 3 steps, 1 round, one thread) with both sides and TRL packed."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from bench.common import child_env
from bench.peers import flops as peers_flops
from bench.peers.flops import ModelShape
from bench.peers.sides import packed_micro_batch
from conftest import REPO, SHARED_DATA

# `model.name: tiny`'s default shape and SmolLM2-135M-Instruct's, as their config.json say.
TINY = {"hidden_size": 256, "intermediate_size": 704, "num_attention_heads": 8, "num_key_value_heads": 2,
        "num_hidden_layers": 4, "vocab_size": 2048}
SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
           "head_dim": 64, "num_hidden_layers": 30, "vocab_size": 49152}


def test_shape_from_config_derives_head_dim_and_defaults_kv_heads():
    assert ModelShape.from_config(TINY) == ModelShape(256, 704, 8, 2, 32, 4, 2048)
    no_gqa = {**TINY, "num_key_value_heads": None}
    assert ModelShape.from_config(no_gqa).kv_heads == 8


def test_matmul_and_lora_parameters():
    tiny = ModelShape.from_config(TINY)
    # q 256x256 + k, v 256x64 each + o 256x256 + gate, up, down 256x704 each = 704,512 per layer, x4 layers.
    assert peers_flops.base_matmul_params(tiny) == 4 * 704_512 == 2_818_048
    # r 16 x (in + out): q 512 + k 320 + v 320 + o 512 + gate 960 + up 960 + down 960 = 4,544, x16 x4.
    assert peers_flops.lora_params(tiny, 16) == 4 * 16 * 4_544 == 290_816
    # SmolLM2-135M: 30 x 3,538,944 matmul weights; with the 49,152 x 576 tied embedding, its 134.5M.
    smol = ModelShape.from_config(SMOLLM2)
    assert peers_flops.base_matmul_params(smol) == 106_168_320
    assert peers_flops.lora_params(smol, 16) == 30 * 16 * (1152 + 768 + 768 + 1152 + 3 * 2112) == 4_884_480


def test_sequence_and_per_token_flops():
    tiny = ModelShape.from_config(TINY)
    one = peers_flops.sequence_flops(tiny, 16, length=10, answer_tokens=3)
    assert one == {"base": 4 * 2_818_048 * 10, "lora": 6 * 290_816 * 10, "head": 4 * 256 * 2048 * 3,
                   "attention": 12 * 4 * 256 * 10 * 10, "total": 112_721_920 + 17_448_960 + 6_291_456 + 1_228_800}
    per_token = peers_flops.flops_per_real_token(tiny, 16, [(10, 3), (20, 5)])
    # attention grows with each sequence's own length: (10^2 + 20^2) / 30 tokens.
    assert per_token["attention"] == 12 * 4 * 256 * 500 / 30
    assert per_token["head"] == 4 * 256 * 2048 * 8 / 30
    assert per_token["base"] == 4 * 2_818_048 and per_token["lora"] == 6 * 290_816
    assert per_token["total"] == pytest.approx(sum(v for k, v in per_token.items() if k != "total"))
    with pytest.raises(ValueError):
        peers_flops.flops_per_real_token(tiny, 16, [])


def test_mfu_and_packed_rows():
    assert peers_flops.mfu(150.0, 4e8, 2.0e11) == pytest.approx(0.3)
    assert packed_micro_batch(16, 45.0, 1024) == 1  # 720 real tokens: one packed row
    assert packed_micro_batch(8, 300.0, 512) == 5
    assert packed_micro_batch(1, 10.0, 4096) == 1  # never zero


def test_matmul_peak_reports_a_rate():
    peak = peers_flops.matmul_peak(64, "float32", repeats=2, warmup=1)
    assert peak["n"] == 64 and peak["flops_per_s"] > 0 and peak["gflops_per_s"] >= 0


@pytest.mark.skipif(not (SHARED_DATA / "banking77" / "train.parquet").is_file(), reason="no banking77 in ../shared/data")
def test_toy_benchmark_has_both_sides_and_equal_losses(tmp_path):
    out = tmp_path / "peers.json"
    env = child_env(1)  # this tree's src/ first, one thread; bench imports from REPO, the cwd
    done = subprocess.run(
        [sys.executable, "-m", "bench.peers.compare", "--models", "tiny", "--steps", "3", "--warmup", "1", "--rounds", "1",
         "--max-rows", "300", "--matmul-n", "256", "--trl-packing", "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = json.loads(out.read_text())
    assert report["threads"] == 1 and set(report["peaks"]) == {"float32", "bfloat16"}
    tiny = report["models"]["tiny"]
    assert list(tiny["sides"]) == ["multitune", "multitune-padded", "trl", "trl-packed"] and tiny["steps"] == 3
    for side in tiny["sides"].values():
        m, run = side["median"], side["rounds"][0]
        assert m["tokens_per_s"] > 0 and m["step_s"] > 0 and m["peak_rss_mib"] > 100
        assert len(run["losses"]) == 3 and all(math.isfinite(x) for x in run["losses"])
        assert m["mfu_float32"] > 0 and m["mfu_bfloat16"] > 0
    ours, trl = tiny["sides"]["multitune"]["rounds"][0], tiny["sides"]["trl"]["rounds"][0]
    # The same rows in the same order, the same adapters from the same seed: the same step losses.
    padded = tiny["sides"]["multitune-padded"]["rounds"][0]
    assert ours["real_tokens_per_step"] == trl["real_tokens_per_step"] == padded["real_tokens_per_step"]
    assert ours["losses"] == pytest.approx(padded["losses"], rel=1e-4)  # shared-prefix rows: the same maths
    assert ours["losses"] == pytest.approx(trl["losses"], rel=0.02) and abs(tiny["loss_gap_multitune_over_trl"]) < 0.02
    assert tiny["sides"]["trl"]["median"]["over_trl"] == 1.0
    assert tiny["flops_per_real_token"]["base"] == 4 * 2_818_048  # the default tiny model's shape
    assert "| tiny | multitune |" in done.stdout and "| tiny | trl |" in done.stdout and "| tiny | trl-packed |" in done.stdout
