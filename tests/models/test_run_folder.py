"""A run folder with a damaged file (cut short, emptied, or not JSON, as an interrupted copy or sync leaves
it): every verb that reads it names the file, says it is damaged or incomplete and what to do, exits 2
with a few lines and no traceback, and leaves every file of the folder as it was."""

from __future__ import annotations

import hashlib
import io
import shutil
import sys
from pathlib import Path

import pytest

from export.fake_hub import FakeHub
from export.finished import finished_run
from multitune.cli import main
from multitune.errors import DamagedFile
from multitune.export import hub
from multitune.io import check_safetensors
from multitune.models.run_folder import RUN_FIX, check_model_folder, open_run

VERBS = {
    "eval": lambda run, out: ["eval", str(run), "eval.baseline=false"],
    "predict": lambda run, out: ["predict", str(run), "--input", str(out / "rows.jsonl"), "--output",
                                 str(out / "predictions.jsonl"), "--task", "claims"],
    "merge": lambda run, out: ["merge", str(run), "--output", str(out / "merged")],
    "export": lambda run, out: ["export", str(run), "--format", "gguf", "--output", str(out / "model.gguf")],
    "push": lambda run, out: ["push", str(run), "--repo-id", "alice/claims"],
    "chat": lambda run, out: ["chat", str(run)],
    "serve": lambda run, out: ["serve", str(run), "--port", "0"],
}
# Every file of the model folder and the run's own records that these verbs read.
MODEL_FILES = ["config.yaml", "data_stats.json", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
               "adapter/tokenizer.json", "adapter/tokenizer_config.json", "adapter/chat_template.jinja"]
RECORDS = ["metrics.jsonl", "eval/metrics.json", "eval/claims/predictions.jsonl"]  # read by eval and push
DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "wrong JSON": lambda data: b'{"step": 6, "loss": [1.5, ',
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return finished_run(tmp_path_factory)


def damaged_copy(run_dir: Path, tmp_path: Path, file: str, damage: str) -> Path:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    path = run / file
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    return run


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refuses(verb: str, run: Path, tmp_path: Path, monkeypatch, capsys) -> str:
    """Run `verb` on the damaged run in-process; returns what it printed to stderr, once checked."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "rows.jsonl").write_text('{"text": "A tree fell on my car.", "label": "Claim"}\n')
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    monkeypatch.setattr(hub, "default_client", lambda get_token=None: FakeHub())  # a push that could succeed
    before = snapshot(run)
    assert main(VERBS[verb](run, out)) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err + captured.out
    assert err.startswith("error: ") and len(err.strip().splitlines()) <= 3, err
    assert snapshot(run) == before  # nothing in the run folder was touched
    assert sorted(p.name for p in out.iterdir()) == ["rows.jsonl"]  # and nothing was written elsewhere
    return err


CASES = [(verb, file, damage) for verb in VERBS for file in MODEL_FILES for damage in DAMAGE
         if not (file.endswith(".jinja") and damage == "wrong JSON")]  # any text is a valid template
CASES += [(verb, file, damage) for verb in ("eval", "push") for file in RECORDS for damage in DAMAGE]


@pytest.mark.parametrize(("verb", "file", "damage"), CASES)
def test_a_damaged_file_is_named_with_what_to_do(verb, file, damage, run_dir, tmp_path, monkeypatch, capsys):
    run = damaged_copy(run_dir, tmp_path, file, damage)
    err = refuses(verb, run, tmp_path, monkeypatch, capsys)
    assert err.startswith(f"error: {run / file}: damaged or incomplete file: "), err
    assert f"fix: {RUN_FIX}" in err


@pytest.mark.parametrize("verb", list(VERBS))
def test_a_missing_weights_file_is_named(verb, run_dir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "adapter" / "adapter_model.safetensors").unlink()
    err = refuses(verb, run, tmp_path, monkeypatch, capsys)
    assert err.startswith(f"error: {run}/adapter/adapter_model.safetensors: damaged or incomplete file: missing")


def test_the_messages_say_what_is_wrong_with_each_kind_of_file(run_dir, tmp_path):
    cases = {
        ("adapter/adapter_model.safetensors", "truncated"): r"its tensors take [\d,]+ bytes but the file holds [\d,]+",
        ("adapter/adapter_model.safetensors", "empty"): "0 bytes, too short to hold a safetensors header",
        ("adapter/adapter_config.json", "empty"): "the file is empty",
        ("adapter/tokenizer.json", "wrong JSON"): r"not valid JSON \(Expecting value",
        ("adapter/chat_template.jinja", "truncated"): r"the chat template does not compile",
        ("config.yaml", "wrong JSON"): "not valid YAML",
    }
    for (file, damage), reason in cases.items():
        run = damaged_copy(run_dir, tmp_path / f"{file}-{damage}".replace("/", "_"), file, damage)
        with pytest.raises(DamagedFile, match=reason) as e:
            open_run(run)
        assert e.value.path == run / file
    run = damaged_copy(run_dir, tmp_path / "cut-at-a-line", "config.yaml", "empty")  # parses, no longer validates
    lines = (run_dir / "config.yaml").read_text().splitlines(keepends=True)
    (run / "config.yaml").write_text("".join(lines[: len(lines) // 2]))
    with pytest.raises(DamagedFile, match="it does not hold the run config multitune wrote: 1 problem in the config"):
        open_run(run)
    run = damaged_copy(run_dir, tmp_path / "cut-mid-line", "config.yaml", "empty")
    (run / "config.yaml").write_text((run_dir / "config.yaml").read_text()[:-5])
    with pytest.raises(DamagedFile, match="its last line is cut short"):
        open_run(run)


def test_an_intact_run_opens_and_a_sharded_model_needs_every_shard(run_dir, tmp_path):
    run = open_run(run_dir)
    assert run.is_adapter and run.base_name and run.cfg.tasks[0].name == "claims"
    check_safetensors(run_dir / "adapter" / "adapter_model.safetensors")
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "tokenizer_config.json"):
        (model / name).write_text("{}")
    shard = model / "model-00001-of-00002.safetensors"
    shutil.copy(run_dir / "adapter" / "adapter_model.safetensors", shard)
    (model / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}')
    with pytest.raises(DamagedFile, match="missing, although model.safetensors.index.json lists it") as e:
        check_model_folder(model)
    assert e.value.path == model / "model-00002-of-00002.safetensors"
    shutil.copy(shard, model / "model-00002-of-00002.safetensors")
    assert check_model_folder(model) is None  # a whole model, not an adapter
