"""Background checkpoint uploads: never block or break training, keep the latest, survive rotation."""

from __future__ import annotations

import shutil
import threading
import time

from export.fake_hub import FakeHub
from multitune.config import validate
from multitune.export.checkpoints import CheckpointPusher, pusher_for


def _checkpoint(root, step):
    folder = root / "checkpoints" / f"step-{step}"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "weights.bin").write_bytes(bytes([step]) * 1000)
    (folder / "state.json").write_text(f'{{"step": {step}}}')
    return folder


def test_submit_returns_at_once_and_the_newest_waiting_checkpoint_wins(tmp_path):
    gate = threading.Event()
    client = FakeHub(gate=gate)
    pusher = CheckpointPusher("alice/run", tmp_path / ".hub-upload", client=client)
    pusher.submit(_checkpoint(tmp_path, 1), 1)
    assert client.started.wait(10)  # step 1 is uploading, held at the gate
    started = time.perf_counter()
    pusher.submit(_checkpoint(tmp_path, 2), 2)
    pusher.submit(_checkpoint(tmp_path, 3), 3)
    assert time.perf_counter() - started < 0.5  # training is never held up by the network
    gate.set()
    assert pusher.close(timeout=30)

    assert pusher.uploaded == [1, 3] and pusher.skipped == [2] and pusher.failures == []
    assert [name for name, _ in client.calls] == ["create_repo", "upload_folder", "upload_folder"]
    upload = client.calls[2][1]
    assert upload["path_in_repo"] == "last-checkpoint" and upload["delete_patterns"] == ["*"]
    assert upload["commit_message"] == "Checkpoint at step 3"
    assert client.uploads[1] == {"last-checkpoint/model/weights.bin": bytes([3]) * 1000,
                                 "last-checkpoint/state.json": b'{"step": 3}'}
    assert not any((tmp_path / ".hub-upload").iterdir())  # snapshots are cleaned up


def test_a_checkpoint_deleted_after_submit_is_still_uploaded_whole(tmp_path):
    gate = threading.Event()
    client = FakeHub(gate=gate)
    pusher = CheckpointPusher("alice/run", tmp_path / ".hub-upload", client=client)
    pusher.submit(_checkpoint(tmp_path, 1), 1)
    assert client.started.wait(10)
    pusher.submit(folder := _checkpoint(tmp_path, 2), 2)
    shutil.rmtree(folder)  # the checkpoint rotation removed it before its upload began
    gate.set()
    assert pusher.close(timeout=30)
    assert pusher.uploaded == [1, 2]
    assert client.uploads[1]["last-checkpoint/model/weights.bin"] == bytes([2]) * 1000


def test_failures_are_counted_never_raised_and_later_uploads_go_on(tmp_path, caplog):
    client = FakeHub(fail_uploads=1)
    with CheckpointPusher("alice/run", tmp_path / ".hub-upload", client=client) as pusher:
        pusher.submit(_checkpoint(tmp_path, 1), 1)
        assert client.started.wait(10)  # step 1 is taken: step 2 cannot replace it
        pusher.submit(_checkpoint(tmp_path, 2), 2)
        pusher.submit(tmp_path / "does-not-exist", 3)  # a bad call from the loop does not raise either
    assert pusher.failures[0] == (1, "ConnectionError: the network went away")
    assert pusher.failures[1][0] == 3 and "no checkpoint folder" in pusher.failures[1][1]
    assert pusher.uploaded == [2] and len(client.uploads) == 1  # nothing empty replaced the good one
    assert "upload of checkpoint step 1 to alice/run failed (training goes on)" in caplog.text


def test_pusher_for_follows_the_config(tmp_path):
    base = {"output_dir": str(tmp_path), "tasks": [{"name": "t", "kind": "classification", "source": "demo:claims"}]}
    assert pusher_for(validate(base)) is None
    assert pusher_for(validate({**base, "hub": {"repo_id": "a/b"}})) is None
    pusher = pusher_for(validate({**base, "hub": {"repo_id": "a/b", "push_checkpoints": True}}), client=FakeHub())
    assert pusher is not None and pusher.repo_id == "a/b" and pusher.private is True
    assert pusher.staging_dir == tmp_path / ".hub-upload"
    assert pusher.close(timeout=5)


def test_a_training_run_uploads_its_checkpoints_and_pushes_at_the_end(tmp_path, monkeypatch):
    from conftest import SMALL_TINY
    from multitune.export import hub
    from multitune.recipes.train import run

    client = FakeHub()
    monkeypatch.setenv("HF_TOKEN", "hf_FAKEtoken0123456789abcdefSECRET")
    monkeypatch.setattr(hub, "default_client", lambda get_token=None: client)
    out = tmp_path / "run"
    run(validate({
        "output_dir": str(out), "model": {"name": "tiny", "tiny": SMALL_TINY},
        "tasks": [{"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 48}],
        "train": {"max_steps": 4, "micro_batch_size": 4}, "eval": {"baseline": False, "max_rows": 4},
        "checkpoint": {"every_steps": 2}, "hub": {"repo_id": "alice/run", "push_checkpoints": True},
    }))
    checkpoint_uploads = [u for u in client.uploads if any(k.startswith("last-checkpoint/") for k in u)]
    assert checkpoint_uploads, "no checkpoint was uploaded"
    newest = checkpoint_uploads[-1]
    assert b'"step": 4' in newest["last-checkpoint/state.json"]  # the final checkpoint, after the rotation
    final = client.uploads[-1]  # push_at_end: the adapter and its card, after every checkpoint upload
    assert "adapter_config.json" in final and "README.md" in final
    assert not (out / ".hub-upload").exists() or not any((out / ".hub-upload").iterdir())
    assert (out / "hub_push.json").is_file()
