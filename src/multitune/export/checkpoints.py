"""Uploading checkpoints to the Hub in the background (`hub.push_checkpoints: true`), for machines that
can vanish (spot / preemptible pods) taking their disk with them.

The training recipe calls `submit(checkpoint_dir, step)` after a checkpoint is complete. `submit` takes a
hard-link snapshot of the folder (milliseconds, no extra disk: later rotation or rewriting of the
checkpoint cannot change what is uploaded) and hands it to `HfApi.upload_folder(..., run_as_future=True)`,
which uploads it to `last-checkpoint/` in the repository on huggingface_hub's own worker thread,
replacing the previous one. While an upload runs, a new checkpoint waits, and a newer one replaces it:
only the latest matters for resuming. Nothing here raises into the loop or blocks it; failures are
logged and counted, and training goes on. `close()` waits for the upload in flight and the one waiting
(call it at the end of training). Only the main process should create a pusher.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multitune.config.schema import RunConfig

log = logging.getLogger("multitune.export")
PATH_IN_REPO = "last-checkpoint"


@dataclass(frozen=True)
class _Job:
    folder: Path
    step: int
    snapshot: bool  # a folder of our own, deleted once uploaded or dropped


class CheckpointPusher:
    def __init__(self, repo_id: str, staging_dir: str | Path, private: bool | None = True, client: Any = None):
        """`staging_dir` holds the snapshots; it must be on the same filesystem as the checkpoints (inside
        the run folder) for hard links. `client` is a `HubClient` with `run_as_future`; by default
        `HfApi`, made at the first upload."""
        self.repo_id = repo_id
        self.private = private
        self.staging_dir = Path(staging_dir)
        self.uploaded: list[int] = []  # steps uploaded, in order
        self.skipped: list[int] = []  # steps replaced by a newer checkpoint before their upload began
        self.failures: list[tuple[int, str]] = []  # (step, what went wrong)
        self._client = client
        self._snapshots = itertools.count()  # unique folder names, even for a step submitted twice
        self._repo_ready = False
        self._lock = threading.Lock()
        self._running: _Job | None = None
        self._waiting: _Job | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._closing = False

    def submit(self, checkpoint_dir: str | Path, step: int) -> None:
        """Upload a complete checkpoint, or queue it behind the upload under way. Returns at once; never
        raises."""
        try:
            job = self._snapshot(Path(checkpoint_dir), step)
        except Exception as e:  # never into the training loop
            self.failures.append((step, f"{type(e).__name__}: {e}"))
            log.warning("could not queue checkpoint step %d for upload: %s", step, e)
            return
        with self._lock:
            if self._closing:
                log.warning("checkpoint pusher is closed; step %d is not uploaded", step)
                self._drop(job)
                return
            if self._running is not None:
                if self._waiting is not None:
                    self._drop(self._waiting)
                self._waiting = job
                return
            self._running = job
            self._idle.clear()
        self._start(job)

    def close(self, timeout: float | None = None) -> bool:
        """Wait for the upload under way and the one waiting. True when they finished within `timeout`."""
        with self._lock:
            self._closing = True
        return self._idle.wait(timeout)

    def __enter__(self) -> CheckpointPusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _snapshot(self, checkpoint_dir: Path, step: int) -> _Job:
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
            return _Job(checkpoint_dir, step, snapshot=False)
        return _Job(target, step, snapshot=True)

    def _drop(self, job: _Job) -> None:
        self.skipped.append(job.step)
        if job.snapshot:
            shutil.rmtree(job.folder, ignore_errors=True)

    def _start(self, job: _Job) -> None:
        """Hand `job` to the client's worker thread; `_finished` runs when it is done."""
        try:
            # An empty folder would replace the last good checkpoint on the Hub with nothing.
            if not any(p.is_file() for p in job.folder.rglob("*")):
                raise FileNotFoundError(f"{job.folder} is gone or holds no files")
            client = self._get_client()
            if not self._repo_ready:  # runs first on the same worker thread as the uploads
                client.run_as_future(client.create_repo, self.repo_id, private=self.private, exist_ok=True,
                                     repo_type="model")
            # delete_patterns is relative to path_in_repo: files of the previous checkpoint that this one
            # lacks are removed in the same commit, so last-checkpoint/ is always one whole checkpoint.
            future = client.upload_folder(
                repo_id=self.repo_id, folder_path=str(job.folder), path_in_repo=PATH_IN_REPO,
                commit_message=f"Checkpoint at step {job.step}", repo_type="model", delete_patterns=["*"],
                run_as_future=True)
        except Exception as e:
            future = Future()
            future.set_exception(e)
        future.add_done_callback(lambda f: self._finished(job, f))

    def _finished(self, job: _Job, future: Future) -> None:
        """Record how the upload of `job` ended, then start the checkpoint waiting, if any."""
        error = future.exception()
        if error is None:
            self._repo_ready = True
            self.uploaded.append(job.step)
            log.info("uploaded checkpoint step %d to %s/%s", job.step, self.repo_id, PATH_IN_REPO)
        else:
            self.failures.append((job.step, f"{type(error).__name__}: {error}"))
            log.warning("upload of checkpoint step %d to %s failed (training goes on): %s", job.step,
                        self.repo_id, error)
        if job.snapshot:
            shutil.rmtree(job.folder, ignore_errors=True)
        with self._lock:
            self._running, self._waiting = self._waiting, None
            if self._running is None:
                self._idle.set()
                return
            following = self._running
        self._start(following)

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
