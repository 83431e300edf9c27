"""Bad input on the command line: one clear message, exit status 2, never a traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from data_helpers import write_jsonl

from multitune.cli import main
from multitune.data.tokenize import encode_segments, segments
from multitune.recipes.preview import marked_text
from multitune.tasks.base import chat

REPO = Path(__file__).resolve().parents[2]


def config_for(tmp_path: Path, source: Path, **task_keys) -> Path:
    task = {"name": "claims", "kind": "classification", "source": str(source), **task_keys}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "tasks": [task]}))
    return path


def preview_fails(capsys, cfg: Path, *overrides: str) -> str:
    assert main(["data", "preview", str(cfg), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("error: ") == 1 and "Traceback" not in err
    return err


def good_rows(n=10):
    return [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(n)]


def test_malformed_json_line(tmp_path, capsys):
    path = tmp_path / "claims.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y",}\n')
    err = preview_fails(capsys, config_for(tmp_path, path))
    assert f"{path}:2: malformed JSON on line 2" in err


def test_missing_column(tmp_path, capsys):
    path = write_jsonl(tmp_path / "claims.jsonl", [{"sentence": "a", "label": "x"}, {"sentence": "b", "label": "y"}])
    err = preview_fails(capsys, config_for(tmp_path, path))
    assert "column 'text' (from `text_column`) is not in the data. Columns present: 'sentence', 'label'" in err
    assert "fix: set tasks.claims.text_column=<one of the columns present>" in err


def test_validation_label_that_training_never_saw(tmp_path, capsys):
    folder = tmp_path / "claims"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", good_rows())
    write_jsonl(folder / "validation.jsonl", [{"text": "z", "label": "c"}])
    err = preview_fails(capsys, config_for(tmp_path, folder, val_split="validation"))
    assert "never occur in training: 'c' (1 rows)" in err


def test_empty_text_under_the_error_policy(tmp_path, capsys):
    rows = good_rows()
    rows[4]["text"] = "   "
    path = write_jsonl(tmp_path / "claims.jsonl", rows)
    err = preview_fails(capsys, config_for(tmp_path, path), "data.empty_text=error")
    assert "task claims, row 4: column 'text' is empty" in err


def test_number_where_text_was_expected(tmp_path, capsys):
    rows = good_rows()
    rows[2]["text"] = 42
    path = write_jsonl(tmp_path / "claims.jsonl", rows)
    err = preview_fails(capsys, config_for(tmp_path, path))
    assert "task claims, row 2: column 'text' should hold text but holds a int (42)" in err


def test_not_utf8_and_empty_files(tmp_path, capsys):
    latin = tmp_path / "claims.csv"
    latin.write_bytes("text,label\nd\xe9j\xe0 vu,a\n".encode("latin-1"))
    assert "not UTF-8 text" in preview_fails(capsys, config_for(tmp_path, latin))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert f"{empty}: the file is empty" in preview_fails(capsys, config_for(tmp_path, empty))


def test_the_real_command_line_prints_no_traceback(tmp_path):
    path = tmp_path / "claims.jsonl"
    path.write_text(json.dumps({"text": "a", "label": "x"}) + "\n{not json}\n")
    r = subprocess.run([sys.executable, "-m", "multitune", "train", str(config_for(tmp_path, path))], cwd=REPO,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[0] == f"error: {path}:2: malformed JSON on line 2, column 2: " \
                                              "Expecting property name enclosed in double quotes"
    assert "Traceback" not in r.stderr + r.stdout


def test_options_and_overrides_mix_in_any_order(tmp_path, capsys):
    path = write_jsonl(tmp_path / "claims.jsonl", good_rows())
    cfg = config_for(tmp_path, path)
    err = preview_fails(capsys, cfg, "--task", "nope", "-n", "1", "data.max_seq_len=64")
    assert "this config has no task 'nope'" in err
    with pytest.raises(SystemExit):
        main(["data", "preview", str(cfg), "--bogus"])


def test_marked_text_wraps_exactly_the_trained_tokens(tokenizer):
    messages = chat("Be brief.", "Is this a claim?", "Claim")
    tok = encode_segments(tokenizer, segments(tokenizer, messages), task_id=0)
    text = marked_text(tokenizer, tok)
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n[[Claim<|eot_id|>]]")
    assert text.count("[[") == 1
    assert text.replace("[[", "").replace("]]", "") == tokenizer.apply_chat_template(list(messages), tokenize=False)
