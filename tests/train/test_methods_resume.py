"""Each method beyond LoRA trains, checkpoints and resumes exactly through the one training recipe: a run
cut back to an early checkpoint and started again ends bitwise equal to the uninterrupted run, with the
same metrics.jsonl rows (tests/train/test_resume.py kills LoRA runs with SIGKILL; what differs between
methods is what a checkpoint must hold: virtual tokens, (IA)^3 vectors, a PiSSA start, LoRA+ groups)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import SMALL_TINY
from multitune.config import validate
from multitune.recipes.train import run

METHODS = {
    "prompt_tuning": {"method": "prompt_tuning", "num_virtual_tokens": 4},
    "prefix_tuning": {"method": "prefix_tuning", "num_virtual_tokens": 4},
    "ia3": {"method": "ia3"},
    # dropout: the random state must come back; PiSSA: its start is recomputed from the base on resume
    "pissa_loraplus": {"method": "lora", "r": 4, "lora_init": "pissa", "loraplus_lr_ratio": 8, "dropout": 0.1},
}


def config(out, adapter: dict):
    return validate({
        "output_dir": str(out),
        "model": {"name": "tiny", "tiny": SMALL_TINY},
        "adapter": adapter,
        "tasks": [{"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 48},
                  {"name": "quiz", "kind": "multiple_choice", "source": "demo:quiz", "max_rows": 32}],
        "data": {"max_seq_len": 128},
        "train": {"max_steps": 6, "micro_batch_size": 4, "grad_accum_steps": 2, "learning_rate": 5e-3},
        "eval": {"baseline": False, "max_rows": 4, "micro_batch_size": 4, "generate": "never"},
        "checkpoint": {"every_steps": 2, "keep_last": None},
        "logging": {"every_steps": 1},
    })


def rows(out) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "tokens_per_s"}
            for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", list(METHODS))
def test_a_run_resumed_from_an_early_checkpoint_ends_bitwise_equal(tmp_path, capsys, name):
    whole = tmp_path / "whole"
    result = run(config(whole, METHODS[name]))
    assert set(result.metrics["after"]) == {"claims", "quiz"}
    # The same run killed after its step-2 checkpoint: what was written later is gone.
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    for later in ("checkpoints/step-4", "checkpoints/step-6", "adapter", "eval", "report.html"):
        shutil.rmtree(cut / later) if (cut / later).is_dir() else (cut / later).unlink()
    capsys.readouterr()
    resumed = run(config(cut, METHODS[name]))
    assert f"resumed from {cut / 'checkpoints' / 'step-2'} (step 2)" in capsys.readouterr().out
    assert resumed.metrics["after"] == result.metrics["after"]
    want = load_file(whole / "adapter" / "adapter_model.safetensors")
    got = load_file(cut / "adapter" / "adapter_model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert rows(cut) == rows(whole)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHODS))
def test_sigkill_at_random_steps_then_resume_gives_the_same_run(tmp_path, name):
    """tests/train/test_resume.py's kill test (packed rows, evaluation, best-checkpoint rotation) for each
    method: SIGKILL at three random steps, then the run ends bitwise equal to an uninterrupted one."""
    import random
    import signal

    from train.test_resume import assert_same_run, launch, wait_until_step, write_config

    ref_dir, out_dir = tmp_path / "ref", tmp_path / "killed"
    ref_dir.mkdir()
    out_dir.mkdir()
    proc = launch(write_config(ref_dir, adapter=METHODS[name]), ref_dir / "run")
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    cfg = write_config(out_dir, adapter=METHODS[name])
    for step in sorted(random.Random(7).sample(range(2, 29), 3)):
        proc = launch(cfg, out_dir / "run")
        if wait_until_step(proc, out_dir / "run", step):
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = launch(cfg, out_dir / "run")
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0 and "resumed from" in output, output
    assert_same_run(out_dir / "run", ref_dir / "run")
