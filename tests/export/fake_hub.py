"""A stand-in for `huggingface_hub.HfApi` that records the calls a push makes and what it would upload.
Like `HfApi`, `run_as_future` runs calls one after the other on one worker thread."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any


class FakeHub:
    def __init__(self, fail_uploads: int = 0, gate: threading.Event | None = None):
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.uploads: list[dict[str, bytes]] = []  # per upload_folder call: repository path -> file content
        self.fail_uploads = fail_uploads  # the first N uploads raise
        self.gate = gate  # when set, uploads wait for it: an upload "in flight"
        self.started = threading.Event()
        self._worker = ThreadPoolExecutor(max_workers=1)

    def run_as_future(self, fn: Any, *args: Any, **kwargs: Any) -> Future:
        return self._worker.submit(fn, *args, **kwargs)

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, run_as_future: bool = False, **kwargs: Any) -> str | Future:
        if run_as_future:
            return self.run_as_future(self.upload_folder, **kwargs)
        self.calls.append(("upload_folder", kwargs))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        if self.fail_uploads:
            self.fail_uploads -= 1
            raise ConnectionError("the network went away")
        folder = Path(kwargs["folder_path"])
        prefix = f"{kwargs['path_in_repo']}/" if kwargs.get("path_in_repo") else ""
        self.uploads.append({prefix + p.relative_to(folder).as_posix(): p.read_bytes()
                             for p in sorted(folder.rglob("*")) if p.is_file()})
        return "commit"
