"""Faults a run must survive without losing what it wrote: corrupt checkpoints, changed setups,
non-finite losses, full or read-only disks."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import SMALL_TINY
from multitune.config import validate
from multitune.errors import UserError
from multitune.recipes.train import run
from multitune.train import checkpoint, loop


def config(out: Path, **sections) -> dict:
    raw = {
        "output_dir": str(out),
        "model": {"name": "tiny", "tiny": SMALL_TINY},
        "adapter": {"dropout": 0.1},
        "tasks": [{"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 64}],
        "train": {"max_steps": 6, "micro_batch_size": 4},
        "eval": {"baseline": False, "max_rows": 4},
        "checkpoint": {"every_steps": 2, "keep_last": 3},
        "logging": {"every_steps": 1},
    }
    for k, v in sections.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) else v
    return raw


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def steps_of(out: Path) -> list[int]:
    return [s for s, _ in checkpoint.complete_checkpoints(out)]


def test_a_corrupt_newest_checkpoint_is_skipped_and_the_run_still_ends_the_same(tmp_path, capsys):
    out = tmp_path / "run"
    run(validate(config(out)))
    want = adapter(out)
    assert steps_of(out) == [2, 4, 6]
    (out / "checkpoints" / "step-6" / "trainable.safetensors").write_bytes(b"\x00" * 10)
    (out / "checkpoints" / "step-8").mkdir()  # a half-written folder without its marker: ignored
    run(validate(config(out)))
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "step-6" in err
    got = adapter(out)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_changed_config_or_dataset_is_refused_with_the_differences(tmp_path):
    data = tmp_path / "claims.csv"
    data.write_text("text,label\n" + "".join(f"row {i} about my car,{'Claim' if i % 2 else 'Not a Claim'}\n"
                                             for i in range(40)))
    raw = config(tmp_path / "run", tasks=[{"name": "claims", "kind": "classification", "source": str(data)}],
                 train={"max_steps": 2})
    run(validate(raw))
    changed = {**raw, "train": {**raw["train"], "learning_rate": 0.5}}
    with pytest.raises(UserError, match=r"train\.learning_rate: 0\.0002 in the checkpoint, 0\.5 now"):
        run(validate(changed))
    data.write_text(data.read_text().replace("row 7 about", "row seven about"))
    with pytest.raises(UserError, match="data: the tokenised training/validation data differ"):
        run(validate(raw))
    assert run(validate(raw), force=True).metrics["final_step"] == 2


def test_resume_never_refuses_to_mix_with_an_earlier_run(tmp_path):
    out = tmp_path / "run"
    run(validate(config(out, train={"max_steps": 2})))
    with pytest.raises(UserError, match="already holds checkpoints"):
        run(validate(config(out, train={"max_steps": 2}, checkpoint={"resume": "never"})))


def nan_on_steps(monkeypatch, bad: set[int]) -> None:
    """Make the training loss NaN on the given (1-based) steps; one forward per step here."""
    calls = {"n": 0}
    real = loop.forward_loss

    def maybe_nan(model, batch, answer_logits_only):
        calls["n"] += 1
        token_loss = real(model, batch, answer_logits_only)
        return token_loss * float("nan") if calls["n"] in bad else token_loss

    monkeypatch.setattr(loop, "forward_loss", maybe_nan)


def test_a_nan_step_is_skipped_counted_and_logged(tmp_path, monkeypatch):
    out = tmp_path / "run"
    nan_on_steps(monkeypatch, {3})
    run(validate(config(out)))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in rows if r.get("skipped_non_finite")]
    assert [(r["step"], r["bad_steps"]) for r in skipped] == [(3, 1)]
    assert all(r["train/loss"] is not None for r in rows if "train/loss" in r and r["step"] != 3)
    state = json.loads((out / "checkpoints" / "step-6" / "state.json").read_text())
    assert state["bad_steps"] == 1 and state["consecutive_bad_steps"] == 0


def test_consecutive_nan_steps_stop_the_run_and_keep_the_last_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    nan_on_steps(monkeypatch, {3, 4, 5, 6})
    with pytest.raises(UserError, match="3 consecutive steps"):
        run(validate(config(out, train={"max_bad_steps": 3})))
    assert steps_of(out) == [2]  # step 4 was not saved: its weights came after a bad step
    assert not (out / "adapter").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MB filesystem (tmpfs) to fill or make read-only; needs root and mount rights."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_stops_with_a_message_and_keeps_the_previous_checkpoint(small_disk):
    out = small_disk / "run"
    run(validate(config(out, train={"max_steps": 4})))
    kept = (out / "checkpoints" / "step-4" / "trainable.safetensors").read_bytes()
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - 40_000))  # room for logs, not for a checkpoint
    with pytest.raises(UserError, match="could not write the checkpoint of step 6: .*No space left"):
        run(validate(config(out)), force=True)
    assert steps_of(out)[-1] == 4
    assert (out / "checkpoints" / "step-4" / "trainable.safetensors").read_bytes() == kept
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_a_read_only_output_folder_gets_a_message_and_loses_nothing(small_disk):
    out = small_disk / "run"
    run(validate(config(out, train={"max_steps": 2})))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(UserError, match="cannot write to the output folder: Read-only file system"):
        run(validate(config(out, train={"max_steps": 2})))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_rotation_keeps_the_newest_and_the_best(tmp_path):
    for step in (2, 4, 6, 8, 10):
        d = tmp_path / "checkpoints" / f"step-{step}"
        d.mkdir(parents=True)
        (d / checkpoint.MARKER).write_text("")
    deleted = checkpoint.rotate(tmp_path, keep_last=2, best_step=4)
    assert sorted(p.name for p in deleted) == ["step-2", "step-6"]
    assert steps_of(tmp_path) == [4, 8, 10]
    assert checkpoint.rotate(tmp_path, keep_last=1, best_step=None) and steps_of(tmp_path) == [10]


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    raw = config(out, train={"max_steps": 2}, logging={"every_steps": 1, "wandb": {"mode": "offline"}})
    run(validate(raw))
    first = json.loads((out / "checkpoints" / "step-2" / "state.json").read_text())["tracker_run_id"]
    run(validate(raw))  # resumes at its end: same wandb run
    second = json.loads((out / "checkpoints" / "step-2" / "state.json").read_text())["tracker_run_id"]
    assert first and first == second


def test_the_best_evaluation_is_checkpointed_and_survives_rotation(tmp_path, monkeypatch):
    from multitune.recipes import train as recipe

    def best_at_step_3(best, name, metrics, primary, step):  # a metric that peaks at step 3
        value = -abs(step - 3)
        if best is None or value > best["value"]:
            return {"metric": name, "higher_is_better": True, "step": step, "value": value}
        return best

    monkeypatch.setattr(recipe, "update_best", best_at_step_3)
    out = tmp_path / "run"
    run(validate(config(out, eval={"every_steps": 1, "best_metric": "claims/loss"},
                        checkpoint={"every_steps": 5, "keep_last": 1})))
    assert steps_of(out) == [3, 6]  # 3 saved as the best, 5 rotated out by the final 6
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["best"] == {"metric": "claims/loss", "higher_is_better": True, "step": 3, "value": 0}
    state = json.loads((out / "checkpoints" / "step-6" / "state.json").read_text())
    assert state["best"]["step"] == 3
