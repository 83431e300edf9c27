"""The container files, checked where Docker cannot run: consistent with the package's own install, and
the entrypoint's decisions (what it runs for one GPU, a node of 8, a cluster, a finished run)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"


def _dockerfile_arg(name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", (REPO / "Dockerfile").read_text(), re.M).group(1)


def _pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {name.lower().replace("_", "-"): version for name, version in pins}


def test_image_installs_what_the_package_declares_at_the_tested_versions():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch_pin = re.search(r"^TORCH_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    assert _dockerfile_arg("TORCH_VERSION") == torch_pin == _pins()["torch"]
    extras = _dockerfile_arg("EXTRAS").split(",")
    assert set(extras) <= set(project["optional-dependencies"])
    wanted = [*project["dependencies"], *(d for e in extras for d in project["optional-dependencies"][e])]
    pins = _pins()
    for spec in map(Requirement, wanted):
        name = spec.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert spec.specifier.contains(pins[name]), f"{name}=={pins[name]} does not satisfy {spec}"


def test_env_example_names_every_variable_the_entrypoint_reads_and_holds_no_secret():
    env_example = (REPO / ".env.example").read_text()
    for name in ("MULTITUNE_CONFIG", "MULTITUNE_RUN_NAME", "HF_TOKEN", "WANDB_API_KEY", "ACCELERATE_CONFIG",
                 "NUM_GPUS", "NUM_NODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "MULTITUNE_API_KEY"):
        assert re.search(rf"^#? ?{name}=", env_example, re.M), name
        assert name in ENTRYPOINT.read_text() or name == "MULTITUNE_API_KEY"
    assert re.search(r"^(HF_TOKEN|WANDB_API_KEY|MULTITUNE_API_KEY)=$", env_example, re.M)
    assert not re.search(r"^(HF_TOKEN|WANDB_API_KEY|MULTITUNE_API_KEY)=.+$", env_example, re.M)
    assert ".env" in (REPO / ".dockerignore").read_text().split()


def _entrypoint(tmp_path, *args, **env):
    """Run the entrypoint with MULTITUNE_DRY_RUN=1: the command it would run, as a list, and stderr."""
    full_env = {k: v for k, v in os.environ.items() if k not in {"HF_TOKEN", "NUM_NODES", "NODE_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT", "NUM_TRAINERS", "NUM_GPUS"}}
    full_env.update({"WORKSPACE": str(tmp_path), "APP_DIR": str(REPO), "MULTITUNE_DRY_RUN": "1", "NUM_GPUS": "1",
                     **env})
    r = subprocess.run(["bash", str(ENTRYPOINT), *args], capture_output=True, text=True, env=full_env, timeout=60)
    return r.returncode, shlex.split(r.stdout), r.stderr


def test_entrypoint_trains_one_gpu_runs_into_the_workspace(tmp_path):
    code, cmd, err = _entrypoint(tmp_path, MULTITUNE_CONFIG="configs/quickstart.yaml", HF_TOKEN="hf_secret_value")
    assert code == 0
    assert cmd == ["multitune", "train", str(REPO / "configs" / "quickstart.yaml"),
                   f"output_dir={tmp_path}/runs/quickstart"]
    assert "HF_TOKEN is set" in err and "hf_secret_value" not in err  # said, never shown


def test_entrypoint_launches_a_node_of_8_and_a_cluster_with_accelerate(tmp_path):
    code, cmd, _ = _entrypoint(tmp_path, "train", "train.max_steps=10", MULTITUNE_CONFIG="configs/quickstart.yaml",
                               NUM_GPUS="8", ACCELERATE_CONFIG="/opt/multitune/configs/accelerate/fsdp.yaml",
                               MULTITUNE_RUN_NAME="big")
    assert code == 0
    # No --multi_gpu beside a config file: accelerate would ignore the file's FSDP for DDP.
    assert cmd[:11] == ["python", "-m", "multitune.launch", "accelerate", "launch", "--config_file",
                        "/opt/multitune/configs/accelerate/fsdp.yaml", "--num_processes", "8", "--num_machines", "1"]
    assert cmd[11:] == ["-m", "multitune", "train", str(REPO / "configs/quickstart.yaml"),
                        f"output_dir={tmp_path}/runs/big", "train.max_steps=10"]

    # A RunPod Instant Cluster: 3 nodes x 4 GPUs, this is node 2.
    code, cmd, _ = _entrypoint(tmp_path, MULTITUNE_CONFIG="configs/quickstart.yaml", NUM_GPUS="",
                               NUM_TRAINERS="4", NUM_NODES="3", NODE_RANK="2", MASTER_ADDR="10.65.0.2",
                               MASTER_PORT="29400")
    assert code == 0
    assert cmd[:16] == ["python", "-m", "multitune.launch", "accelerate", "launch", "--multi_gpu",
                        "--num_processes", "12", "--num_machines", "3", "--machine_rank", "2",
                        "--main_process_ip", "10.65.0.2", "--main_process_port", "29400"]


def test_entrypoint_does_not_train_a_finished_run_again_and_refuses_a_missing_config(tmp_path):
    run = tmp_path / "runs" / "quickstart"
    (run / "eval").mkdir(parents=True)
    (run / "adapter").mkdir()
    (run / "eval" / "metrics.json").write_text("{}")
    (run / "hub_push.json").write_text("{}")
    code, cmd, err = _entrypoint(tmp_path, MULTITUNE_CONFIG="configs/quickstart.yaml")
    assert code == 0 and cmd == [] and "holds a finished run" in err

    code, _, err = _entrypoint(tmp_path)
    assert code == 2 and "MULTITUNE_CONFIG is not set" in err
    code, _, err = _entrypoint(tmp_path, MULTITUNE_CONFIG="nope.yaml")
    assert code == 2 and "no such file" in err


@pytest.mark.parametrize("command", ["serve", "push", "merge"])
def test_entrypoint_passes_other_commands_to_multitune(tmp_path, command):
    code, cmd, _ = _entrypoint(tmp_path, command, "/workspace/runs/x", "--flag")
    assert code == 0 and cmd == ["multitune", command, "/workspace/runs/x", "--flag"]


def test_entrypoint_never_traces_or_echoes_secrets():
    text = ENTRYPOINT.read_text()
    assert "set -x" not in text and not re.search(r"echo[^\n]*\$\{?(HF_TOKEN|WANDB_API_KEY)", text)
    assert subprocess.run(["bash", "-n", str(ENTRYPOINT)]).returncode == 0
