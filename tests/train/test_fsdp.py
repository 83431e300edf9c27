"""FSDP2 through `multitune train` on CPU processes over gloo, by the code GPUs run: a run's whole life.

Every run here is a real `torchrun ... multitune train` (through fsdp_driver.py, which adds faults on
request) under a timeout that catches a hang. The tiny model, few rows, few steps: a 2-process run takes
about 20 s on 2 cores. Item by item (issue 22):

- evaluation in lockstep: scored (one-pass and best-first search) and generated rows on uneven shards,
  every 2 steps; the sharding evaluation used before lockstep never finishes (in make test);
- LoRA, DoRA and full fine-tuning: the same weights and metrics as one process; a process SIGKILLed mid-run
  and the run relaunched ends bitwise equal to the uninterrupted run; outputs load whole (`-m distributed`);
- HSDP as 2 "nodes" x 2 processes on loopback through scripts/torchrun-multinode.sh: SIGTERM to one
  process makes all four checkpoint the same step, both launchers exit 75, the relaunch finishes
  (`-m distributed`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import SMALL_TINY
from multitune.train import checkpoint

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RUN_TIMEOUT = 420  # seconds: a run takes 20-60 s here even on a loaded machine; a hang is caught
TASKS = [
    {"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 60},
    # 12 labels: a candidate tree of 79 nodes on the tiny tokenizer, scored by the best-first search
    {"name": "intents", "kind": "classification", "source": "demo:intents", "max_rows": 60,
     "prompt_template": "Text: {text}"},
    {"name": "quiz", "kind": "multiple_choice", "source": "demo:quiz", "max_rows": 40},
    {"name": "instruct", "kind": "instruction", "source": "demo:instruct", "max_rows": 30},
]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_config(out: Path, method: str = "lora", **sections) -> dict:
    raw = {
        "output_dir": str(out), "seed": 0,
        "model": {"name": "tiny", "tiny": SMALL_TINY},
        "adapter": {"method": method, "dropout": 0.0},
        "tasks": TASKS,
        # 2 processes x 4 x 2 accumulation = one process x 4 x 4
        "train": {"max_steps": 6, "micro_batch_size": 4, "grad_accum_steps": 2, "learning_rate": 2e-3},
        # 9 rows: shards of 5 and 4; passes of 16 tokens hold one row each (a row is longer), so one process
        # has 5 scoring passes to run and the other 4 (with larger passes both shards fit the same number of
        # passes, and evaluation sharded without lockstep happens not to hang)
        "eval": {"max_rows": 9, "every_steps": 2, "generate": "always", "generate_max_rows": 5,
                 "max_new_tokens": 6, "micro_batch_size": 4, "tokens_per_pass": 16},
        "checkpoint": {"every_steps": 2, "keep_last": 5},
        "logging": {"every_steps": 1},
    }
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v}
    return raw


def write(raw: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "10", **extra}


def torchrun(config: Path, *, timeout: float = RUN_TIMEOUT, **extra_env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(HERE / "fsdp_driver.py"), str(config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=env(ACCELERATE_USE_FSDP="true", **extra_env))


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    folder = out / "adapter"
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(folder / name)


def metrics_rows(out: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock throughput (the one field a relaunch cannot reproduce)."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def eval_rows(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in metrics_rows(out) if any(k.startswith("eval/") for k in r)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Uninterrupted 2-process FSDP runs, one per method, made when a test first asks for one."""
    made: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}
    root = tmp_path_factory.mktemp("fsdp")

    def get(method: str) -> tuple[Path, subprocess.CompletedProcess]:
        if method not in made:
            out = root / method
            # Full fine-tuning also takes the memory-efficient load: process 0 alone reads the weights.
            extra = {"FSDP_CPU_RAM_EFFICIENT_LOADING": "true"} if method == "full" else {}
            r = torchrun(write(raw_config(out, method), root / f"{method}.yaml"), **extra)
            assert r.returncode == 0, r.stderr[-4000:]
            made[method] = out, r
        return made[method]

    return get


def test_evaluation_goes_in_lockstep_on_uneven_shards(runs):
    out, r = runs("lora")
    assert "2 processes: FSDP2: 2 shards" in r.stdout
    assert "sharded: DTensor parameters; this process holds" in r.stdout
    evals = eval_rows(out)
    assert sorted(evals) == [0, 2, 4, 6]  # the baseline, every 2 steps, the end
    for step in (2, 4, 6):
        for task in ("claims", "intents", "quiz"):
            assert evals[step][f"eval/{task}/gen_rows"] == 5.0, (step, task)  # generated, and scored:
            assert f"eval/{task}/accuracy" in evals[step]
        assert "eval/instruct/rougeL" in evals[step] and "eval/instruct/loss" in evals[step]
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["after"]["claims"]["rows"] == 9  # every row once from shards of 5 and 4
    assert sorted(p.name for p in (out / "checkpoints" / "step-6").glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"]


def test_the_sharding_evaluation_used_before_lockstep_never_finishes(tmp_path):
    """The same run with evaluation sharded as before (unpadded shards, per-process batch counts): one
    process runs a forward the other does not. The processes then wait for each other forever (NCCL's
    behaviour, and gloo's when the sizes happen to agree), which a 15 s collective timeout turns into an
    error here (no collective of a healthy run waits that long for the other process in a baseline
    evaluation of 9 rows), or gloo notices sizes that disagree and aborts at once."""
    config = write(raw_config(tmp_path / "old"), tmp_path / "old.yaml")
    r = torchrun(config, MULTITUNE_TEST_OLD_EVAL="1", MULTITUNE_TEST_PG_TIMEOUT="15")
    assert r.returncode != 0
    assert any(m in r.stderr for m in ("Timed out waiting", "collective mismatch", "Connection reset by peer")), \
        r.stderr[-3000:]
    assert "training: 6 steps" in r.stdout and not (tmp_path / "old" / "checkpoints").exists()  # in the baseline


@pytest.mark.distributed
@pytest.mark.parametrize("method", ["lora", "dora", "full"])
def test_a_fsdp_run_equals_one_process_and_resumes_bitwise_after_a_kill(runs, method, tmp_path):
    from multitune.config import validate
    from multitune.recipes.train import run

    out, _ = runs(method)
    fsdp = final_weights(out)
    # One process, the same global batch: the same weights and metrics within DDP's tolerances.
    single_out = tmp_path / "single"
    run(validate(raw_config(single_out, method, train={"grad_accum_steps": 4})))
    single = final_weights(single_out)
    assert fsdp.keys() == single.keys() and fsdp
    for k in single:
        torch.testing.assert_close(fsdp[k], single[k], rtol=1e-3, atol=1e-5, msg=k)
    a = json.loads((out / "eval" / "metrics.json").read_text())
    b = json.loads((single_out / "eval" / "metrics.json").read_text())
    for phase in ("before", "after"):
        for task, want in b[phase].items():
            assert a[phase][task]["rows"] == want["rows"]
            assert a[phase][task].get("accuracy") == want.get("accuracy")
            assert a[phase][task]["loss"] == pytest.approx(want["loss"], rel=1e-4)
    # SIGKILL one process as it starts step 3 (step 2 is checkpointed), then run the same command again.
    killed_out = tmp_path / "killed"
    config = write(raw_config(killed_out, method), tmp_path / "killed.yaml")
    r = torchrun(config, MULTITUNE_TEST_SIGNAL="SIGKILL:1:3")
    assert r.returncode != 0 and "SIGKILL" in r.stderr
    assert [s for s, _ in checkpoint.complete_checkpoints(killed_out)] == [2]
    r = torchrun(config)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "(step 2)" in r.stdout  # resumed from step 2
    resumed = final_weights(killed_out)
    assert resumed.keys() == fsdp.keys()
    assert all(torch.equal(resumed[k], fsdp[k]) for k in fsdp), "the resumed run differs from the uninterrupted one"
    assert metrics_rows(killed_out) == metrics_rows(out)
    _loads_whole(killed_out, method)


@pytest.mark.distributed
def test_qlora_under_fsdp_keeps_the_4bit_weights_whole_and_equals_one_process(tmp_path):
    pytest.importorskip("bitsandbytes")
    from multitune.config import validate
    from multitune.recipes.train import run

    raw = raw_config(tmp_path / "fsdp", "qlora", quantization={"compute_dtype": "float32"},
                     eval={"every_steps": 3, "generate": "ends"})
    # As configs/accelerate/fsdp-qlora-1x4.yaml launches it (efficient loading on: it skips 4-bit models).
    r = torchrun(write(raw, tmp_path / "q.yaml"), FSDP_CPU_RAM_EFFICIENT_LOADING="true")
    assert r.returncode == 0, r.stderr[-4000:]
    # FSDP2 would turn bitsandbytes' 4-bit weights into plain tensors: they stay whole on every process.
    assert re.search(r"holds [\d,]+ of [\d,]+ elements, [\d,]+ of them whole on every process \(4-bit", r.stdout)
    run(validate({**raw, "output_dir": str(tmp_path / "single"), "train": {**raw["train"], "grad_accum_steps": 4}}))
    got, want = final_weights(tmp_path / "fsdp"), final_weights(tmp_path / "single")
    assert got.keys() == want.keys() and got
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-3, atol=1e-5, msg=k)


def _loads_whole(out: Path, method: str) -> None:
    """The final adapter or model loads with transformers / peft, whole (not one process's shard)."""
    from transformers import AutoModelForCausalLM

    folder = out / "adapter"
    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(folder)
    else:
        from multitune.models.adapters import load_adapter

        base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        model = load_adapter(AutoModelForCausalLM.from_pretrained(base), folder)
    hidden = SMALL_TINY["hidden_size"]
    q = dict(model.named_parameters())
    shapes = {tuple(p.shape) for n, p in q.items() if "q_proj" in n and "lora_A" not in n and "lora_B" not in n
              and "magnitude" not in n}
    assert (hidden, hidden) in shapes  # a whole q_proj weight, not a half
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 20, 30, 40]])).logits).all()


def nodes(config: Path, logs: Path, port: int) -> list[subprocess.Popen]:
    """scripts/torchrun-multinode.sh on 2 "nodes" of 2 processes each, on loopback: its default layout,
    HSDP (each node holds a copy sharded over its 2 processes)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the script runs `python`
    out = []
    for n in (0, 1):
        e = env(NNODES="2", NODE_RANK=str(n), GPUS_PER_NODE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                PATH=path)
        with (logs / f"node{n}.out").open("w") as stdout, (logs / f"node{n}.err").open("w") as stderr:
            out.append(subprocess.Popen(["bash", str(REPO / "scripts" / "torchrun-multinode.sh"), str(config)],
                                        stdout=stdout, stderr=stderr, env=e, cwd=REPO))
    return out


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


@pytest.mark.distributed
def test_hsdp_on_two_nodes_stops_every_process_at_one_checkpoint_and_the_launchers_say_75(tmp_path):
    import psutil

    from multitune.config import validate
    from multitune.recipes.train import run

    out = tmp_path / "hsdp"
    # 4 processes x 1 x 2 accumulation: HSDP's all-reduce between the nodes waits for the second micro-batch
    raw = raw_config(out, train={"max_steps": 30, "micro_batch_size": 1, "grad_accum_steps": 2},
                     eval={"every_steps": 10, "generate": "ends"}, checkpoint={"every_steps": 2, "keep_last": 2})
    config = write(raw, tmp_path / "hsdp.yaml")
    first = nodes(config, tmp_path, free_port())
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (out / "checkpoints" / "step-2" / checkpoint.MARKER).is_file():
            assert time.monotonic() < deadline and all(p.poll() is None for p in first), \
                (tmp_path / "node0.err").read_text()[-3000:]
            time.sleep(0.5)
        psutil.Process(first[1].pid).children()[0].send_signal(signal.SIGTERM)  # one process of node 1
    finally:
        codes = wait_all(first, RUN_TIMEOUT)
    err = (tmp_path / "node0.err").read_text()
    # Every process stopped after the same step and saved it; each node's launcher says "requeue me".
    assert codes == [75, 75], err[-3000:]
    step, path = checkpoint.complete_checkpoints(out)[-1]
    assert 2 < step < 30 and f"after step {step}; checkpoint saved" in err
    assert sorted(p.name for p in path.glob("rng-*.pt")) == [f"rng-{r}.pt" for r in range(4)]
    assert json.loads((path / "state.json").read_text())["step"] == step
    log = (tmp_path / "node0.out").read_text()
    assert "4 processes: HSDP: 2 copies x 2 shards (FSDP2 on a 2-D mesh)" in log
    held, total = (int(x.replace(",", "")) for x in re.search(r"holds ([\d,]+) of ([\d,]+) elements", log).groups())
    assert held * 2 == total  # each process holds half: sharded over its node's 2, not over all 4
    assert "weights read by process 0 alone and broadcast" in log  # the script's efficient loading
    # Requeued: the same command on both nodes resumes from that checkpoint and finishes.
    assert wait_all(nodes(config, tmp_path, free_port()), RUN_TIMEOUT) == [0, 0], \
        (tmp_path / "node0.err").read_text()[-3000:]
    assert f"(step {step})" in (tmp_path / "node0.out").read_text()
    assert json.loads((out / "eval" / "metrics.json").read_text())["final_step"] == 30
    single_out = tmp_path / "single"
    run(validate({**raw, "output_dir": str(single_out), "train": {**raw["train"], "grad_accum_steps": 8}}))
    got, want = final_weights(out), final_weights(single_out)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-3, atol=1e-5, msg=k)
