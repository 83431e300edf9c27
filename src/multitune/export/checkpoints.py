"""Uploading checkpoints to the Hub in the background (`hub.push_checkpoints: true`), for machines that
can vanish (spot / preemptible pods) taking their disk with them.

The training loop calls `submit(checkpoint_dir, step)` after a checkpoint is complete. `submit` only takes
a hard-link snapshot of the folder (milliseconds, no extra disk: later rotation or rewriting of the
checkpoint cannot change what is uploaded) and hands it to one worker thread. The worker uploads it to
`last-checkpoint/` in the repository, replacing the previous one. If checkpoints come faster than the
network takes them, a waiting one is replaced by the newer one: only the latest matters for resuming.
Nothing here raises into the loop or blocks it; failures are logged and counted, and training goes on.
`close()` waits for the upload in flight and the one waiting (call it at the end of training).
Only the main process should create a pusher.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from multitune.config.schema import RunConfig

log = logging.getLogger("multitune.export")
PATH_IN_REPO = "last-checkpoint"


class CheckpointPusher:
    def __init__(self, repo_id: str, staging_dir: str | Path, private: bool | None = True, client: Any = None):
        """`staging_dir` holds the snapshots; it must be on the same filesystem as the checkpoints (inside
        the run folder) for hard links. `client` is a `HubClient`; by default `HfApi`, made in the worker."""
        self.repo_id = repo_id
        self.private = private
        self.staging_dir = Path(staging_dir)
        self.uploaded: list[int] = []  # steps uploaded, in order
        self.skipped: list[int] = []  # steps replaced by a newer checkpoint before their upload began
        self.failures: list[tuple[int, str]] = []  # (step, what went wrong)
        self._client = client
        self._snapshots = itertools.count()  # unique folder names, even for a step submitted twice
        self._repo_ready = False
        self._pending: tuple[Path, int, bool] | None = None  # (folder, step, is a snapshot to delete)
        self._closing = False
        self._wake = threading.Condition()
        self._worker = threading.Thread(target=self._run, name="multitune-checkpoint-pusher", daemon=True)
        self._worker.start()

    def submit(self, checkpoint_dir: str | Path, step: int) -> None:
        """Queue a complete checkpoint for upload. Returns at once; never raises."""
        try:
            folder, is_snapshot = self._snapshot(Path(checkpoint_dir), step)
            with self._wake:
                if self._closing:
                    log.warning("checkpoint pusher is closed; step %d is not uploaded", step)
                    return
                if self._pending is not None:
                    self._drop(self._pending)
                self._pending = (folder, step, is_snapshot)
                self._wake.notify()
        except Exception as e:  # never into the training loop
            self.failures.append((step, f"{type(e).__name__}: {e}"))
            log.warning("could not queue checkpoint step %d for upload: %s", step, e)

    def close(self, timeout: float | None = None) -> bool:
        """Wait for the uploads under way and queued. True when the worker finished within `timeout`."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._worker.join(timeout)
        return not self._worker.is_alive()

    def __enter__(self) -> CheckpointPusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _snapshot(self, checkpoint_dir: Path, step: int) -> tuple[Path, bool]:
        """Hard links of every file of the checkpoint in a folder of our own; the checkpoint itself when
        linking is impossible (another filesystem), accepting that it may change under the upload."""
        if not checkpoint_dir.is_dir():
            raise FileNotFoundError(f"no checkpoint folder at {checkpoint_dir}")
        target = self.staging_dir / f"step-{step}.{next(self._snapshots)}"
        try:
            for path in checkpoint_dir.rglob("*"):
                if path.is_file():
                    dest = target / path.relative_to(checkpoint_dir)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.link(path, dest)
        except OSError:
            shutil.rmtree(target, ignore_errors=True)
            return checkpoint_dir, False
        return target, True

    def _drop(self, job: tuple[Path, int, bool]) -> None:
        folder, step, is_snapshot = job
        self.skipped.append(step)
        if is_snapshot:
            shutil.rmtree(folder, ignore_errors=True)

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._closing:
                    self._wake.wait()
                if self._pending is None:  # closing and nothing left
                    return
                job, self._pending = self._pending, None
            self._upload(job)

    def _upload(self, job: tuple[Path, int, bool]) -> None:
        folder, step, is_snapshot = job
        try:
            # An empty folder would replace the last good checkpoint on the Hub with nothing.
            if not any(p.is_file() for p in folder.rglob("*")):
                raise FileNotFoundError(f"{folder} is gone or holds no files")
            client = self._get_client()
            if not self._repo_ready:
                client.create_repo(self.repo_id, private=self.private, exist_ok=True, repo_type="model")
                self._repo_ready = True
            # delete_patterns is relative to path_in_repo: files of the previous checkpoint that this one
            # lacks are removed in the same commit, so last-checkpoint/ is always one whole checkpoint.
            client.upload_folder(repo_id=self.repo_id, folder_path=str(folder), path_in_repo=PATH_IN_REPO,
                                 commit_message=f"Checkpoint at step {step}", repo_type="model",
                                 delete_patterns=["*"])
            self.uploaded.append(step)
            log.info("uploaded checkpoint step %d to %s/%s", step, self.repo_id, PATH_IN_REPO)
        except Exception as e:
            self.failures.append((step, f"{type(e).__name__}: {e}"))
            log.warning("upload of checkpoint step %d to %s failed (training goes on): %s", step, self.repo_id, e)
        finally:
            if is_snapshot:
                shutil.rmtree(folder, ignore_errors=True)

    def _get_client(self) -> Any:
        if self._client is None:
            from multitune.export.hub import default_client

            self._client = default_client()
        return self._client


def pusher_for(cfg: RunConfig, client: Any = None) -> CheckpointPusher | None:
    """The pusher a run's config asks for (`hub.push_checkpoints: true`), staging in the run folder; None
    when it asks for none."""
    if cfg.hub is None or not cfg.hub.push_checkpoints:
        return None
    return CheckpointPusher(cfg.hub.repo_id, Path(cfg.output_dir) / ".hub-upload", cfg.hub.private, client)
