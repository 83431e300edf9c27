"""The exit status a preempted run gives through a launcher, and the scripts that requeue on it.

torchrun's agent exits 1 whatever its workers' statuses; `python -m multitune.launch` gives 75 when the
workers stopped after a checkpoint (tests/train/test_fsdp.py runs it on two torchrun nodes).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from multitune import launch

REPO = Path(__file__).resolve().parents[1]


def failed(*codes: int) -> ChildFailedError:
    return ChildFailedError("multitune", {rank: ProcessFailure(rank, 1000 + rank, code, "<N/A>")
                                          for rank, code in enumerate(codes)})


@pytest.mark.parametrize(("raised", "status"), [
    (failed(75, 75), 75),
    (failed(75, -signal.SIGTERM), 75),  # the agent's SIGTERM ended the slower process after the checkpoint
    (failed(75, 1), 1),  # a crash is not requeued
    (failed(-signal.SIGKILL), 1),
    (SignalException("launcher got SIGTERM", signal.SIGTERM), 75),  # forwarded: the workers checkpoint
    (SignalException("launcher got SIGHUP", signal.SIGHUP), 128 + signal.SIGHUP),
    (None, 0),
])
def test_the_launcher_status_says_requeue_only_after_a_checkpoint(monkeypatch, capsys, raised, status):
    def fake_launch(argv):
        assert argv[:2] == ["torchrun", "--nproc_per_node"]
        if raised is not None:
            raise raised

    monkeypatch.setattr(launch, "_launch", fake_launch)
    assert launch.run(["torchrun", "--nproc_per_node", "2", "-m", "multitune", "train", "run.yaml"]) == status


def test_the_launcher_must_be_named():
    assert launch.run(["python", "x.py"]) == 2 and launch.run(["accelerate", "config"]) == 2


@pytest.mark.parametrize(("training_status", "requeued"), [(75, True), (1, False), (0, False)])
def test_the_slurm_script_requeues_a_preempted_job_only(tmp_path, training_status, requeued):
    """scripts/slurm-3x4.sbatch with srun and scontrol stood in for: the doctor check, then the training
    step's status (the highest of the nodes' launchers)."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    log = tmp_path / "calls"
    (stubs / "srun").write_text(f'#!/usr/bin/env bash\necho "srun main=$MAIN_ADDR $*" >> {log}\n'
                                f'case "$*" in *doctor*) exit 0 ;; esac\nexit {training_status}\n')
    # Many host names, written one at a time: a reader that stops after the first line (`head -n 1`)
    # closes the pipe while scontrol still writes, the SIGPIPE that once ended the script under pipefail.
    (stubs / "scontrol").write_text(f'#!/usr/bin/env bash\necho "scontrol $*" >> {log}\n'
                                    'if [ "$1" = show ]; then for i in $(seq 1 20000); do echo "node$i"; done; fi\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "node[1-3]"}
    r = subprocess.run(["bash", str(REPO / "scripts" / "slurm-3x4.sbatch"), "run.yaml"], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=60)
    assert r.returncode == training_status, r.stderr
    calls = log.read_text()
    assert "doctor" in calls and "launch-multinode.sh" in calls
    assert calls.count("srun main=node1 ") == 2, calls
    assert ("scontrol requeue 4242" in calls) == requeued


def test_the_scripts_launch_through_the_status_translating_wrapper():
    for script in ("torchrun-multinode.sh", "launch-multinode.sh"):
        text = (REPO / "scripts" / script).read_text()
        assert "python -m multitune.launch" in text and "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" in text, script
    assert "#SBATCH --requeue" in (REPO / "scripts" / "slurm-3x4.sbatch").read_text()
