"""bench/gpu/check.py --cpu-smoke: every path of the GPU check (issues 11 and 22) runs on a CPU at a toy size,
with real banking77 and commonsense_qa rows, before a GPU is lent for it; GPU-only parts say so."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from bench.common import child_env
from bench.gpu import data as gpu_data
from bench.gpu import launch as gpu_launch
from bench.gpu import shapes as gpu_shapes
from bench.gpu import steps as gpu_steps
from bench.gpu.sections import compare_layouts
from bench.gpu.steps import sequence_lengths
from conftest import REPO, SHARED_DATA

SKIP = "skipped: no CUDA"
METHODS = ["lora", "qlora", "dora", "full", "lora_checkpointing"]
SECTIONS = ["environment", "data", "defaults", "lora", "share_prefix", "eval", *METHODS[1:], "trl", "logits",
            "launch_single", "launch_fsdp", "launch_fsdp_qlora", "compile"]
CPU_RUN_PRINTS = "layout: shared-prefix rows; weights float32, no autocast"
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data (banking77, commonsense_qa) is absent")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    done = subprocess.run([sys.executable, "-m", "bench.gpu.check", "--cpu-smoke", "--out", str(out),
                           "--data", str(SHARED_DATA)], cwd=REPO, env=child_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


@needs_data
def test_every_section_ran_and_gpu_only_parts_say_so(smoke):
    report, md = smoke
    s = report["sections"]
    assert report["mode"] == "cpu-smoke" and list(s) == SECTIONS
    assert not [k for k, v in s.items() if "error" in v]
    env = s["environment"]
    assert any(line.startswith("torch ") for line in env["doctor"]) and env["versions"]["torch"] == torch.__version__
    assert env["gpu"] == SKIP and env["peak"]["measured_tflops"] == SKIP
    assert s["launch_fsdp"]["status"].startswith(SKIP) and s["launch_fsdp_qlora"]["status"].startswith(SKIP)
    assert set(s["data"]["tasks"]) == {"banking77", "commonsense_qa"} and s["data"]["train_examples"] > 150
    assert "| lora | 2 | packed x2 |" in md and "| lora | 2 | shared_prefix (default) x8 |" in md
    assert "| launch_single | 1 | step-2 | [3, 4] | exactly |" in md
    assert f"| lora | shared_prefix | no | float32 | to the adapters' float32 (peft) | False | {CPU_RUN_PRINTS} |" in md


@needs_data
def test_the_defaults_section_reports_what_a_cpu_run_resolves(smoke):
    d = smoke[0]["sections"]["defaults"]
    assert d["device"] == "cpu" and d["bf16"] is False
    for method in ("lora", "qlora", "dora", "full"):
        m = d[method]
        assert (m["layout"], m["mixed_precision"], m["dtype"], m["tf32"], m["dropout"]) == \
            ("shared_prefix", "no", "float32", False, 0.0)
        assert m["run_prints"] == CPU_RUN_PRINTS
    assert d["full"]["adapter_input_cast"] == "none: no adapters"
    assert d["qlora"]["quantization"] == "nf4, double True, compute bfloat16, storage uint8"


def test_the_defaults_resolve_to_bf16_and_padded_rows_on_a_cuda_gpu(monkeypatch):
    # What the defaults section says on a GPU with bf16, without one: the device is the only input.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    d = gpu_steps.device_defaults(gpu_shapes.LLAMA3_8B, gpu_data.task_configs(SHARED_DATA, 10))
    assert d["device"] == "cuda" and d["bf16"] is True
    for method in ("lora", "qlora", "dora"):
        assert (d[method]["layout"], d[method]["mixed_precision"], d[method]["dtype"], d[method]["tf32"]) == \
            ("padded", "bf16", "bfloat16", True)
        assert d[method]["adapter_input_cast"] == "off: autocast decides"
    # Full fine-tuning keeps float32 master weights under bf16 autocast.
    assert (d["full"]["layout"], d["full"]["mixed_precision"], d["full"]["dtype"]) == ("padded", "bf16", "float32")
    assert d["lora"]["run_prints"] == "layout: padded rows; weights bfloat16, autocast bf16"
    # A layout the check asks for explicitly is an override; the default layout is left to the resolution.
    cfg, overrides = gpu_steps.resolved_config(gpu_shapes.LLAMA3_8B, gpu_steps.Method("lora", 32),
                                               gpu_data.task_configs(SHARED_DATA, 10), "shared_prefix", 7)
    assert cfg.shares_prefix and overrides["train"]["share_prefix"] is True and cfg.train.micro_batch_size == 16
    _, default = gpu_steps.resolved_config(gpu_shapes.LLAMA3_8B, gpu_steps.Method("lora", 32),
                                           gpu_data.task_configs(SHARED_DATA, 10), "default", 7)
    assert "share_prefix" not in default["train"] and "packing" not in default["data"]
    assert "mixed_precision" not in default["train"] and "dropout" not in default["adapter"]


@pytest.fixture
def gpu_defaults_on_the_cpu(monkeypatch):
    """The bench's configs resolved as on a GPU with bf16 (bf16 autocast, bfloat16 or float32 weights,
    padded rows), run on the CPU, which runs bf16 autocast too; accelerate's state is left clean."""
    from accelerate.state import AcceleratorState, GradientState

    from multitune.config import device
    from multitune.models import load

    monkeypatch.setattr(load, "for_this_machine", lambda cfg: device.for_device(cfg, gpu=True, bf16=True))
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@needs_data
def test_the_gpu_defaults_train_and_evaluate_through_the_bench_on_a_cpu(gpu_defaults_on_the_cpu):
    # What the CPU smoke cannot reach: bf16 autocast with adapters fed bf16 inputs, float32 master weights
    # under autocast, and generation under the run's autocast (it raised before evaluate_run took it).
    from bench.gpu import eval as gpu_eval

    torch.manual_seed(0)
    shape = gpu_shapes.SMOKE
    streams, _ = gpu_data.build_streams(shape, SHARED_DATA)
    peaks = {"measured_tflops": SKIP, "datasheet_tflops": None}
    lora = gpu_steps.measure(shape, gpu_steps.Method("lora", 2, layouts=("default", "shared_prefix")), streams, peaks)
    assert lora["default_layout"] == "padded" and lora["layouts"] == ["padded", "shared_prefix"]
    assert lora["settings"]["run_prints"] == "layout: padded rows; weights bfloat16, autocast bf16"
    full = gpu_steps.measure(shape, gpu_steps.Method("full", 1, layouts=("default",)), streams, peaks)
    assert full["settings"]["run_prints"] == "layout: padded rows; weights float32, autocast bf16"
    for r in (lora["padded"], lora["shared_prefix"], full["padded"]):
        assert all(math.isfinite(x) for x in r["losses"]) and r["losses"][-1] < r["losses"][0], r["losses"]
    assert lora["padded"]["losses"][0] == pytest.approx(math.log(shape.vocab), abs=0.1)  # random weights
    evaluated = gpu_eval.measure_eval(shape, streams)
    assert evaluated["settings"]["run_prints"] == "layout: padded rows; weights bfloat16, autocast bf16"
    for task in ("banking77", "commonsense_qa"):
        m = evaluated[task]["metrics"]
        assert (m["rows"], m["gen_rows"]) == (shape.eval_rows, shape.eval_generate_rows)
        assert 0.0 <= m["accuracy"] <= 1.0 and evaluated[task]["generation"]["forward_calls"] >= 2


@needs_data
@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_with_the_cpu_defaults_and_reports_throughput(smoke, method):
    result = smoke[0]["sections"][method]
    # On a CPU the default layout is shared-prefix rows; QLoRA (slow CPU 4-bit kernels) measures it alone.
    assert result["default_layout"] == "shared_prefix" and result["trainable_params"] > 0
    assert result["layouts"] == (["shared_prefix"] if method == "qlora" else ["packed", "shared_prefix"])
    assert (result["settings"]["mixed_precision"], result["settings"]["dtype"]) == ("no", "float32")
    assert result["overrides"]["shared_prefix"]["train"].get("share_prefix") is None  # resolved, not set
    for layout in result["layouts"]:
        r = result[layout]
        assert r["tokens_per_s"] > 0 and r["real_tokens_per_step"] > 0 and r["tflop_per_step"]["total"] > 0
        assert all(math.isfinite(x) for x in r["losses"]) and r["losses"][-1] < r["losses"][0], r["losses"]
        assert r["peak_memory_gib"] == SKIP and r["mfu_measured_peak"] == SKIP and r["mfu_datasheet_peak"] == SKIP
    if "packed" in result:  # a packed row is full; shared-prefix rows run each common start once
        assert result["packed"]["positions_per_step"] >= result["packed"]["real_tokens_per_step"]
        assert result["shared_prefix"]["positions_per_step"] < result["shared_prefix"]["real_tokens_per_step"]


@needs_data
def test_shared_prefix_rows_match_padded_rows_on_the_same_examples(smoke):
    s = smoke[0]["sections"]["share_prefix"]
    padded, shared = s["padded"]["padded"], s["shared_prefix"]["shared_prefix"]
    assert s["padded"]["layouts"] == ["padded"] and s["shared_prefix"]["layouts"] == ["shared_prefix"]
    assert s["padded"]["overrides"]["padded"]["train"]["share_prefix"] is False
    # The same weights and examples: the same tokens and, the layout being exact, the same first loss.
    assert padded["real_tokens_per_step"] == shared["real_tokens_per_step"]
    assert s["first_loss_relative_difference"] < 1e-5 and shared["losses"][0] == pytest.approx(padded["losses"][0])
    # Padded rows run padding; shared-prefix rows run each common start once and no padding.
    assert padded["positions_per_step"] > padded["real_tokens_per_step"] > shared["positions_per_step"]
    assert s["positions_ratio"] == pytest.approx(shared["positions_per_step"] / padded["positions_per_step"], abs=1e-3)
    assert s["speedup"] > 0 and s["peak_memory_ratio"] == SKIP and s["verdict"].startswith("not judged on a CPU")


def test_the_layout_verdict_needs_speed_at_no_more_memory():
    def run(layout, tokens_per_s, peak):
        return {layout: {"tokens_per_s": tokens_per_s, "peak_memory_gib": peak, "positions_per_step": 100.0,
                         "losses": [2.0]}}

    wins = compare_layouts(run("padded", 1000.0, 40.0), run("shared_prefix", 1300.0, 38.0), gpu=True)
    assert (wins["speedup"], wins["peak_memory_ratio"]) == (1.3, 0.95) and wins["verdict"].startswith("shared-prefix rows win")
    heavy = compare_layouts(run("padded", 1000.0, 40.0), run("shared_prefix", 1300.0, 60.0), gpu=True)
    assert heavy["peak_memory_ratio"] == 1.5 and heavy["verdict"].startswith("padded rows stay the GPU default")
    slow = compare_layouts(run("padded", 1000.0, 40.0), run("shared_prefix", 1040.0, 30.0), gpu=True)
    assert slow["verdict"].startswith("padded rows stay the GPU default")
    oom = compare_layouts(run("padded", 1000.0, 40.0), {"status": "out of memory: CUDA out of memory"}, gpu=True)
    assert oom["verdict"].startswith("padded rows stay the GPU default: shared-prefix rows ran out of memory")


@needs_data
@pytest.mark.parametrize("task,kind,candidates", [("banking77", "classification", 77),
                                                  ("commonsense_qa", "multiple_choice", 5)])
def test_the_eval_section_scores_and_generates_every_row_it_is_given(smoke, task, kind, candidates):
    e = smoke[0]["sections"]["eval"]
    assert (e["settings"]["mixed_precision"], e["settings"]["dtype"], e["method"]) == ("no", "float32", "lora")
    t = e[task]
    assert (t["kind"], t["candidates"]) == (kind, candidates) and t["tree_nodes"] >= candidates
    shape = gpu_shapes.SMOKE
    assert t["rows_given"] == min(shape.eval_rows, t["validation_rows"]) == t["metrics"]["rows"]
    assert t["generate_rows_given"] == shape.eval_generate_rows == t["metrics"]["gen_rows"]
    m = t["metrics"]
    assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["gen_accuracy"] <= 1.0 and 0.0 <= m["gen_invalid_rate"] <= 1.0
    assert math.isfinite(m["loss"]) and m["loss"] > 0 and t["same_scores_both_passes"]
    scoring, generation = t["scoring"], t["generation"]
    assert scoring["rows_per_s"] > 0 and scoring["forward_calls"] >= 1 and scoring["positions"] > 0
    # Greedy decoding: at least one forward call per new token of the one generation batch (2 rows).
    assert generation["forward_calls"] >= 2 and generation["positions"] >= generation["forward_calls"]
    assert scoring["peak_memory_gib"] == generation["peak_memory_gib"] == SKIP


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
    for layout in s["logits"]["answer_only"]["layouts"]:
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
    for name in ("packed", "defaults"):  # packed against packed; each tool's default layout against the other's
        assert isinstance(report["targets"][f"multitune_over_trl_tokens_per_s_{name} >= 1.5"]["met"], bool)


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
    # Full fine-tuning's weights, gradients and two AdamW states: 4 copies of (linear + embedding + head).
    assert gpu_shapes.full_state_gib(shape, 1, 4) * 2**30 == 4 * 4 * (576 + 2 * 32 * 8)
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
