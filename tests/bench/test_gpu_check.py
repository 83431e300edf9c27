"""bench/gpu_check.py --cpu-smoke: every path of the GPU check (issue 11) runs on a CPU at a toy size, with
real banking77 and commonsense_qa rows, before a GPU is lent for it; GPU-only parts say so."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, SHARED_DATA

sys.path.insert(0, str(REPO / "bench"))
import gpu_launch  # noqa: E402 (bench/ is not a package)
import gpu_shapes  # noqa: E402
from gpu_steps import sequence_lengths  # noqa: E402

SKIP = "skipped: no CUDA"
METHODS = ["lora", "qlora", "dora", "full", "lora_checkpointing"]
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data (banking77, commonsense_qa) is absent")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu-smoke", "--out", str(out),
                           "--data", str(SHARED_DATA)], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


@needs_data
def test_every_section_ran_and_gpu_only_parts_say_so(smoke):
    report, md = smoke
    s = report["sections"]
    assert report["mode"] == "cpu-smoke" and list(s) == ["environment", "data", *METHODS, "trl", "logits",
                                                          "launch_single", "launch_fsdp", "launch_fsdp_qlora", "compile"]
    assert not [k for k, v in s.items() if "error" in v]
    env = s["environment"]
    assert any(line.startswith("torch ") for line in env["doctor"]) and env["versions"]["torch"] == torch.__version__
    assert env["gpu"] == SKIP and env["peak"]["measured_tflops"] == SKIP
    assert s["launch_fsdp"]["status"].startswith(SKIP) and s["launch_fsdp_qlora"]["status"].startswith(SKIP)
    assert set(s["data"]["tasks"]) == {"banking77", "commonsense_qa"} and s["data"]["train_examples"] > 150
    assert "| lora | 2 | packed x2 |" in md and "| launch_single | 1 | step-2 | [3, 4] | exactly |" in md


@needs_data
@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_reports_throughput(smoke, method):
    result = smoke[0]["sections"][method]
    layouts = [k for k in ("packed", "padded") if k in result]
    assert layouts[0] == "packed" and result["trainable_params"] > 0
    for layout in layouts:
        r = result[layout]
        assert r["tokens_per_s"] > 0 and r["real_tokens_per_step"] > 0 and r["tflop_per_step"]["total"] > 0
        assert all(math.isfinite(x) for x in r["losses"]) and r["losses"][-1] < r["losses"][0], r["losses"]
        assert r["peak_memory_gib"] == SKIP and r["mfu_measured_peak"] == SKIP and r["mfu_datasheet_peak"] == SKIP


@needs_data
def test_resumed_run_continues_with_the_same_loss_and_saves_whole_tensors(smoke):
    launch = smoke[0]["sections"]["launch_single"]
    uninterrupted = {int(k): v for k, v in launch["losses_uninterrupted"].items()}
    resumed = {int(k): v for k, v in launch["losses_resumed"].items()}
    assert sorted(uninterrupted) == [1, 2, 3, 4] and launch["resumed_steps"] == sorted(resumed) == [3, 4]
    assert all(resumed[step] == uninterrupted[step] for step in resumed) and launch["same_loss_exactly"]
    adapter = launch["adapter"]
    assert adapter["all_full_shape"] and adapter["wrong"] == []
    assert adapter["tensors"] == adapter["expected_tensors"] == 2 * 7 * 1  # A and B on 7 projections, 1 layer
    # down_proj: in 512 (intermediate), out 256 (hidden), r 8.
    assert list(adapter["example"].values()) == [[8, 512], [256, 8]]


@needs_data
def test_compile_and_answer_only_logits_leave_the_losses_unchanged(smoke):
    s = smoke[0]["sections"]
    eager, compiled = s["compile"]["eager"]["packed"], s["compile"]["compiled"]["packed"]
    assert s["compile"]["backend"] == "eager" and compiled["tokens_per_s"] > 0
    assert compiled["losses"] == pytest.approx(eager["losses"], rel=1e-4)
    for layout in ("packed", "padded"):
        answer_only, plain = s["logits"]["answer_only"][layout], s["logits"]["plain"][layout]
        assert answer_only["losses"] == pytest.approx(plain["losses"], rel=1e-4)
        # Logits at the answers only: far fewer positions through the head, the same loss.
        assert answer_only["tflop_per_step"]["head"] < plain["tflop_per_step"]["head"] / 5


@needs_data
def test_the_peer_trains_the_same_rows(smoke):
    report = smoke[0]
    trl = report["sections"]["trl"]
    if "status" in trl:  # the bench extra is not installed
        assert trl["status"].startswith("skipped: trl not installed")
        return
    for layout in ("packed", "padded"):
        r = trl[layout]
        assert r["tokens_per_s"] > 0 and r["trainable_params"] == report["sections"]["lora"]["trainable_params"]
        assert all(math.isfinite(x) for x in r["losses"]) and r["losses"][-1] < r["losses"][0]
        assert isinstance(report["targets"][f"multitune_over_trl_tokens_per_s_{layout} >= 1.5"]["met"], bool)


def test_flops_count_a_frozen_base_at_4n_and_a_trained_one_at_6n():
    shape = gpu_shapes.Shape(hidden=8, intermediate=16, heads=2, kv_heads=1, vocab=32, layers=1, full_layers=(1,),
                             small_layers=1, lora_r=2)
    # q, o: 8x8; k, v: 8x4 (one kv head of 4); gate, up, down: 8x16.
    assert gpu_shapes.linear_params(shape, 1) == 64 * 2 + 32 * 2 + 128 * 3 == 576
    frozen = gpu_shapes.step_flops(shape, 1, "lora", tokens=10, logit_positions=3, sequence_lengths=[6, 4])
    assert frozen["linear"] == 4 * 576 * 10 and frozen["head"] == 4 * 8 * 32 * 3
    assert frozen["attention"] == 6 * 8 * (36 + 16) and frozen["lora"] == 6 * gpu_shapes.lora_params(shape, 1, 2) * 10
    trained = gpu_shapes.step_flops(shape, 1, "full", tokens=10, logit_positions=3, sequence_lengths=[6, 4])
    assert trained["linear"] == 6 * 576 * 10 and trained["lora"] == 0
    assert gpu_shapes.datasheet_peak("NVIDIA H200") == 989.4 and gpu_shapes.datasheet_peak("Tesla T4") is None


def test_packed_rows_are_split_into_their_sequences_and_padding_is_left_out():
    packed = {"position_ids": torch.tensor([[0, 1, 2, 0, 1, 0]]), "task_ids": torch.tensor([[0, 0, 0, 1, 1, -1]])}
    assert sequence_lengths(packed) == [3, 2]
    padded = {"attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])}
    assert sequence_lengths(padded) == [3, 2]


def test_fsdp_launch_commands_cut_the_shipped_topologies_to_one_process(tmp_path):
    import yaml

    cmd = gpu_launch.command("fsdp_qlora", tmp_path)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and cmd[-3:] == ["-m", "multitune", "train"]
    assert cmd[cmd.index("--main_process_port") + 1] == "29512"  # its own port: it runs beside the FSDP one
    cut = yaml.safe_load((tmp_path / "accelerate-fsdp_qlora.yaml").read_text())
    assert cut["distributed_type"] == "FSDP" and cut["num_processes"] == 1 and cut["fsdp_config"]["fsdp_version"] == 2
    assert "quantization.storage_dtype=bfloat16" in gpu_launch.TOPOLOGIES["fsdp_qlora"][1]


def test_adapter_shapes_of_the_8b_model():
    shapes = gpu_launch.expected_shapes(gpu_shapes.LLAMA3_8B, 32)
    assert shapes["self_attn.k_proj"] == (1024, 4096) and shapes["mlp.down_proj"] == (4096, 14336)
