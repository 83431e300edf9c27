from pathlib import Path

import pytest
import yaml

from multitune import config
from multitune.errors import UserError

BASE = {
    "output_dir": "runs/t",
    "tasks": [
        {"name": "claims", "kind": "classification", "source": "demo:claims"},
        {"name": "quiz", "kind": "multiple_choice", "source": "demo:quiz"},
    ],
}


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def error_of(fn) -> str:
    with pytest.raises(UserError) as e:
        fn()
    return str(e.value)


def test_defaults_fill_every_section(tmp_path):
    cfg = config.load(write(tmp_path, BASE))
    assert cfg.train.epochs == 2
    assert cfg.data.val_fraction == 0.2
    assert cfg.adapter.method == "lora"
    assert cfg.model.name == "tiny"
    assert [t.kind for t in cfg.tasks] == ["classification", "multiple_choice"]


def test_unknown_key_names_it_and_suggests_the_right_one(tmp_path):
    msg = error_of(lambda: config.load(write(tmp_path, BASE), ["train.learning_rat=1e-4"]))
    assert "train.learning_rat" in msg
    assert "did you mean 'learning_rate'" in msg


def test_unknown_task_key_is_located_by_task_name(tmp_path):
    raw = {**BASE, "tasks": [{**BASE["tasks"][0], "labl_column": "x"}]}
    msg = error_of(lambda: config.load(write(tmp_path, raw)))
    assert "tasks[claims].labl_column" in msg
    assert "did you mean 'label_column'" in msg


def test_all_problems_are_reported_at_once(tmp_path):
    msg = error_of(lambda: config.load(write(tmp_path, BASE), ["train.epochs=0", "data.val_fraction=2",
                                                              "eval.bogus=1"]))
    assert "3 problems" in msg
    assert "train.epochs" in msg and "data.val_fraction" in msg and "eval.bogus" in msg


def test_override_addresses_a_task_by_name_and_parses_values(tmp_path):
    cfg = config.load(write(tmp_path, BASE), ["tasks.quiz.weight=2.5", "tasks.claims.source=data/x.csv",
                                              "train.learning_rate=1e-4", "logging.wandb={mode: offline}"])
    assert cfg.task("quiz").weight == 2.5
    assert cfg.task("claims").source == "data/x.csv"
    assert cfg.train.learning_rate == pytest.approx(1e-4)
    assert cfg.logging.wandb is not None and cfg.logging.wandb.mode == "offline"


def test_override_of_an_unknown_task_lists_the_tasks(tmp_path):
    msg = error_of(lambda: config.load(write(tmp_path, BASE), ["tasks.claim.weight=2"]))
    assert "no task named 'claim'" in msg and "did you mean 'claims'" in msg


def test_malformed_override_and_missing_file(tmp_path):
    assert "key=value" in error_of(lambda: config.load(write(tmp_path, BASE), ["train.epochs"]))
    assert "config file not found" in error_of(lambda: config.load(tmp_path / "nope.yaml"))


def test_yaml_syntax_error_points_at_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("output_dir: x\ntasks: [\n  {name: a\n")
    msg = error_of(lambda: config.load(path))
    assert str(path) in msg and "not valid YAML" in msg


def test_unknown_task_kind_and_duplicate_names(tmp_path):
    raw = {"tasks": [{"name": "a", "kind": "regression", "source": "demo:claims"}]}
    assert "unknown task kind 'regression'" in error_of(lambda: config.load(write(tmp_path, raw)))
    raw = {"tasks": [BASE["tasks"][0], BASE["tasks"][0]]}
    assert "repeated: claims" in error_of(lambda: config.load(write(tmp_path, raw)))


def test_config_is_frozen(tmp_path):
    cfg = config.load(write(tmp_path, BASE))
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its own ValidationError
        cfg.train.epochs = 5  # type: ignore[misc]


def test_saved_config_reloads_to_the_same_values(tmp_path):
    cfg = config.load(write(tmp_path, BASE), ["train.learning_rate=5e-4"])
    config.save(cfg, tmp_path / "out" / "config.yaml")
    again = config.load(tmp_path / "out" / "config.yaml")
    assert again == cfg


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")))
def test_every_shipped_config_loads(path):
    config.load(path)


YAML_11_WORDS = """\
output_dir: runs/t
tasks:
  - {name: answer, kind: classification, source: demo:claims, labels: [yes, no, Off, ON]}
train:
  mixed_precision: no
  gradient_checkpointing: yes
  share_prefix: off
eval:
  baseline: on
"""


def test_yes_no_on_off_in_a_file_stay_what_was_typed_where_text_is_expected(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(YAML_11_WORDS)
    cfg = config.load(path)
    assert cfg.train.mixed_precision == "no"  # YAML 1.1 read it as False: "Input should be 'no', ... (got False)"
    assert cfg.tasks[0].labels == ["yes", "no", "Off", "ON"]
    # where the schema expects a boolean, the same words are still booleans
    assert (cfg.train.gradient_checkpointing, cfg.train.share_prefix, cfg.eval.baseline) == (True, False, True)


def test_yes_no_on_off_as_override_values(tmp_path):
    path = write(tmp_path, {**BASE, "train": {"mixed_precision": "bf16"}})
    cfg = config.load(path, ["train.mixed_precision=no", "eval.baseline=off", "train.compile=yes",
                             "data.packing=true", "tasks.claims.labels=[yes, no]"])
    assert cfg.train.mixed_precision == "no"
    assert (cfg.eval.baseline, cfg.train.compile, cfg.data.packing) == (False, True, True)
    assert cfg.tasks[0].labels == ["yes", "no"]
    msg = error_of(lambda: config.load(path, ["train.mixed_precision=off"]))
    assert "train.mixed_precision: Input should be 'auto', 'no', 'bf16' or 'fp16' (got 'off')" in msg


def test_the_resolved_config_round_trips_the_words(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(YAML_11_WORDS)
    cfg = config.load(path)
    config.save(cfg, tmp_path / "saved.yaml")
    assert config.load(tmp_path / "saved.yaml") == cfg
    assert yaml.safe_load((tmp_path / "saved.yaml").read_text())["train"]["mixed_precision"] == "no"
