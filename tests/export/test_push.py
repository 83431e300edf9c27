"""`multitune push` with an injected Hub client: the calls, the files, the card, and no token anywhere."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from export.fake_hub import FakeHub
from multitune import config
from multitune.cli import main
from multitune.errors import UserError
from multitune.export import hub
from multitune.export.hub import after_training, assert_no_secrets, push_error, push_run

TOKEN = "hf_FAKEtoken0123456789abcdefSECRET"


@pytest.fixture
def fake_hub(monkeypatch):
    """The client `multitune push` gets, with a (fake) token in the environment as on a real machine."""
    client = FakeHub()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(hub, "default_client", lambda get_token=None: client)
    return client


@pytest.fixture
def run_copy(run_dir, tmp_path):
    """A copy of the finished run that a test may change (pushes record themselves in the run folder)."""
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


def _with_hub(run, **hub_section):
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["output_dir"] = str(run)
    raw["hub"] = hub_section or None
    cfg = config.validate(raw)
    config.save(cfg, run / "config.yaml")
    return cfg


def _every_file_under(*folders):
    return [p for folder in folders for p in folder.rglob("*") if p.is_file()]


def test_push_uploads_the_adapter_with_its_card_and_never_the_token(run_copy, fake_hub, capsys):
    run_dir = run_copy
    assert main(["push", str(run_dir), "--repo-id", "alice/tiny-demo", "--private"]) == 0

    assert [name for name, _ in fake_hub.calls] == ["create_repo", "upload_folder"]
    assert fake_hub.calls[0][1] == {"repo_id": "alice/tiny-demo", "private": True, "exist_ok": True,
                                    "repo_type": "model"}
    upload = fake_hub.calls[1][1]
    assert upload["repo_id"] == "alice/tiny-demo" and upload["repo_type"] == "model"
    assert upload["commit_message"] == "Upload adapter trained with multitune"
    (files,) = fake_hub.uploads
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "README.md", "training_config.yaml", "eval_metrics.json", "data_stats.json"} <= set(files)
    assert not any(name.startswith(("checkpoints/", "eval/", ".")) for name in files)
    assert files["adapter_model.safetensors"] == (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    assert files["eval_metrics.json"] == (run_dir / "eval" / "metrics.json").read_bytes()
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: peft\n") and "# tiny-demo" in card
    assert "## Results per task" in card and "## Data mixture" in card and "## How to use" in card

    out = capsys.readouterr()
    assert "pushed" in out.out and "https://huggingface.co/alice/tiny-demo" in out.out
    assert TOKEN not in out.out + out.err
    for path in _every_file_under(run_dir):  # what push (and training) wrote locally
        assert TOKEN.encode() not in path.read_bytes(), path
    for name, content in files.items():  # what went up
        assert TOKEN.encode() not in content, name
    assert not list(run_dir.glob(".push-*"))  # the staging folder is gone
    record = json.loads((run_dir / "hub_push.json").read_text())
    assert record["repo_id"] == "alice/tiny-demo" and record["merged"] is False and "README.md" in record["files"]


def test_push_merged_uploads_a_plain_model(run_copy, fake_hub, capsys):
    assert main(["push", str(run_copy), "--repo-id", "alice/tiny-merged", "--merged"]) == 0
    assert fake_hub.calls[0][1]["private"] is None  # a new repository gets its owner's default visibility
    (files,) = fake_hub.uploads
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= set(files)
    assert "adapter_config.json" not in files
    assert files["README.md"].decode().startswith("---\nlibrary_name: transformers\n")
    assert "largest logit difference" in capsys.readouterr().out
    assert all(TOKEN.encode() not in content for content in files.values())


def test_push_refuses_to_upload_a_secret_and_does_not_show_it(run_copy, fake_hub):
    run = run_copy
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["tasks"][0]["system_prompt"] = f"my key is {TOKEN}"
    config.save(config.validate(raw), run / "config.yaml")

    with pytest.raises(UserError) as e:
        push_run(run, "alice/x", client=fake_hub)
    assert "training_config.yaml would upload the value of HF_TOKEN" in str(e.value)
    assert TOKEN not in str(e.value) and fake_hub.calls == [] and not (run / "hub_push.json").exists()


def test_secret_scan_knows_the_login_cache_token_and_ignores_short_values(tmp_path):
    (tmp_path / "a.txt").write_text("nothing to see: 1234")
    assert_no_secrets(tmp_path, env={"WANDB_API_KEY": "1234"}, get_token=lambda: None)
    (tmp_path / "b.txt").write_text("token hf_from_the_login_cache_000")
    with pytest.raises(UserError, match="b.txt would upload the value of the Hugging Face token"):
        assert_no_secrets(tmp_path, env={}, get_token=lambda: "hf_from_the_login_cache_000")


def test_no_token_or_no_hub_fails_before_anything_is_sent():
    with pytest.raises(UserError, match="no Hugging Face token") as e:
        hub.default_client(get_token=lambda: None)
    assert "HF_TOKEN" in e.value.fix
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):  # the tests run offline
        hub.default_client(get_token=lambda: TOKEN)


def test_hub_failures_say_what_to_do():
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    response = httpx.Response(403, request=httpx.Request("POST", "https://huggingface.co/api/repos/create"))
    assert "may not create or write repositories of 'alice'" in push_error(HfHubHTTPError("403", response=response), "alice/x").what
    assert "could not reach" in push_error(ConnectionError("down"), "alice/x").what


def test_a_bad_or_missing_repo_id_is_refused(run_dir, fake_hub, capsys):
    assert main(["push", str(run_dir), "--repo-id", "no-owner"]) == 2
    assert main(["push", str(run_dir)]) == 2  # and the run's config has no hub section
    assert "set hub.repo_id" in capsys.readouterr().err and fake_hub.calls == []


def test_push_takes_what_is_not_given_from_the_runs_hub_section(run_copy, fake_hub):
    _with_hub(run_copy, repo_id="alice/from-config", private=False, push_at_end=False)
    assert main(["push", str(run_copy)]) == 0
    assert fake_hub.calls[0][1] == {"repo_id": "alice/from-config", "private": False, "exist_ok": True,
                                    "repo_type": "model"}
    assert "adapter_config.json" in fake_hub.uploads[0]


def test_training_writes_the_card_and_pushes_at_the_end_when_asked(run_dir, run_copy):
    card = (run_dir / "README.md").read_text()  # written by `multitune train` itself
    assert "# NAME" in card and 'PeftModel.from_pretrained(base, "OWNER/NAME")' in card

    run = run_copy
    cfg = _with_hub(run, repo_id="alice/auto")
    client = FakeHub()
    result = after_training(cfg, client=client)
    assert result is not None and result.url == "https://huggingface.co/alice/auto"
    assert client.calls[0][1]["private"] is True  # automatic pushes default to private
    assert "# auto" in (run / "README.md").read_text()

    silent = FakeHub()
    assert after_training(cfg.model_copy(update={"hub": None}), client=silent) is None and silent.calls == []


def test_a_failed_push_at_the_end_says_the_run_is_safe(run_copy):
    run = run_copy
    cfg = _with_hub(run, repo_id="alice/auto")
    with pytest.raises(UserError) as e:
        after_training(cfg, client=FakeHub(fail_uploads=1))
    assert "training finished and is saved in" in e.value.what
    assert f"multitune push {run} --repo-id alice/auto" in e.value.fix
    assert not (run / "hub_push.json").exists()  # so the container entrypoint retries it


def test_hub_section_is_validated():
    with pytest.raises(UserError, match="not of the form OWNER/NAME"):
        config.validate({"tasks": [{"name": "t", "kind": "classification", "source": "demo:claims"}],
                         "hub": {"repo_id": "just-a-name"}})
    with pytest.raises(UserError, match="did you mean 'push_at_end'"):
        config.validate({"tasks": [{"name": "t", "kind": "classification", "source": "demo:claims"}],
                         "hub": {"repo_id": "a/b", "push_at_ends": True}})
