"""A checkpoint with a file cut short, emptied or not JSON (an interrupted copy or sync of the run folder):
`multitune train` names the file, skips that checkpoint and resumes from the one before; a checkpoint given
by path is refused by name; nothing already written changes."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import SMALL_TINY
from multitune.cli import main
from multitune.train import checkpoint

DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "wrong JSON": lambda data: b'{"step": 4, "tokens_seen": [',
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 4-step run with complete checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("checkpoints") / "run"
    config = {
        "output_dir": str(out),
        "model": {"name": "tiny", "tiny": SMALL_TINY},
        "adapter": {"dropout": 0.0},
        "tasks": [{"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 40}],
        "train": {"max_steps": 4, "micro_batch_size": 4},
        "eval": {"baseline": False, "max_rows": 4, "generate": "never"},
        "checkpoint": {"every_steps": 2, "keep_last": None},
        "logging": {"every_steps": 2},
    }
    (out.parent / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(out.parent / "run.yaml")]) == 0
    assert [s for s, _ in checkpoint.complete_checkpoints(out)] == [2, 4]
    return out


def copy_of(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("file", [*checkpoint.FILES, "rng-0.pt"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_each_damaged_file_makes_the_checkpoint_unusable_by_name(file, damage, trained, tmp_path):
    step = tmp_path / "step-4"
    shutil.copytree(trained / "checkpoints" / "step-4", step)
    (step / file).write_bytes(DAMAGE[damage]((step / file).read_bytes()))
    if file == "config.yaml" and damage == "truncated" and (step / file).read_text().endswith("\n"):
        (step / file).write_text((step / file).read_text()[:-3])  # cut mid-line, as a copy almost always does
    with pytest.raises(ValueError, match=rf"^{file.replace('.', '[.]')} is damaged or incomplete \(.+\)$"):
        checkpoint.read_meta(step)


def test_a_missing_file_makes_the_checkpoint_unusable_by_name(trained, tmp_path):
    step = tmp_path / "step-4"
    shutil.copytree(trained / "checkpoints" / "step-4", step)
    (step / "optimizer.pt").unlink()
    with pytest.raises(ValueError, match=r"^optimizer\.pt is damaged or incomplete \(missing\)$"):
        checkpoint.read_meta(step)


def test_train_skips_a_damaged_checkpoint_and_resumes_from_the_one_before(trained, tmp_path, capsys):
    run = copy_of(trained, tmp_path)
    weights = run / "checkpoints" / "step-4" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    earlier = snapshot(run / "checkpoints" / "step-2")
    assert main(["train", str(trained.parent / "run.yaml"),
                 f"output_dir={run}"]) == 0
    captured = capsys.readouterr()
    assert (f"warning: skipping checkpoint {run}/checkpoints/step-4: trainable.safetensors is damaged or "
            "incomplete (its header should be") in captured.err
    assert f"resumed from {run}/checkpoints/step-2 (step 2)" in captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err
    assert snapshot(run / "checkpoints" / "step-2") == earlier
    assert checkpoint.read_meta(run / "checkpoints" / "step-4")[0].step == 4  # written again, complete


def test_a_damaged_checkpoint_given_by_path_is_refused_and_nothing_changes(trained, tmp_path, capsys):
    run = copy_of(trained, tmp_path)
    state = run / "checkpoints" / "step-4" / "state.json"
    state.write_bytes(b"")
    before = snapshot(run)
    rc = main(["train", str(trained.parent / "run.yaml"), f"output_dir={run}",
               f"checkpoint.resume={run}/checkpoints/step-4"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(("error", "  fix"))]
    assert lines == [
        f"error: {run}/checkpoints/step-4: cannot resume from this checkpoint: state.json is damaged or incomplete "
        "(the file is empty)",
        "  fix: point checkpoint.resume at another checkpoints/step-<N> folder, or set checkpoint.resume=auto to "
        "take the newest one that is complete",
    ]
    assert snapshot(run) == before
