"""`multitune push`: put a finished run on the Hugging Face Hub with its model card.

What is uploaded is staged in one folder first (the adapter, or the merged model; `README.md`, the card;
`training_config.yaml`, `eval_metrics.json`, `data_stats.json`), checked for secrets, then sent with
two calls on a `HubClient`: `create_repo` and `upload_folder`. `huggingface_hub.HfApi` is the real client
and tests inject their own. The token is never handled here: huggingface_hub reads it from `HF_TOKEN` or
its login cache when it sends a request; multitune only asks whether one exists, to fail early.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from multitune.config.schema import REPO_ID, RunConfig
from multitune.errors import UserError, _causes, no_connection
from multitune.export.merge import MergeResult, merge_run
from multitune.io import write_json_atomic
from multitune.models.run_folder import check_records
from multitune.models.trained import read_run_config
from multitune.report.card import model_card, write_model_card

# Environment variables whose values must never reach an uploaded file.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "MULTITUNE_API_KEY")
SCAN_LIMIT_BYTES = 64 << 20  # weight shards beyond this hold numbers, not text; scanning them costs minutes
# Run files that go beside the model: what was trained (config), on what (data stats), how well (metrics).
PUSH_RECORD = "hub_push.json"  # written after a successful push; the container entrypoint looks for it
RUN_FILES = {"config.yaml": "training_config.yaml", "eval/metrics.json": "eval_metrics.json",
             "data_stats.json": "data_stats.json", "report.html": "report.html"}


class HubClient(Protocol):
    """The calls a push makes (and, with `run_as_future`, the background checkpoint uploads);
    `huggingface_hub.HfApi` implements them."""

    def create_repo(self, repo_id: str, *, private: bool | None = None, exist_ok: bool = False,
                    repo_type: str | None = None) -> Any: ...

    def upload_folder(self, *, repo_id: str, folder_path: str | Path, path_in_repo: str | None = None,
                      commit_message: str | None = None, repo_type: str | None = None,
                      delete_patterns: list[str] | str | None = None, run_as_future: bool = False) -> Any: ...

    def run_as_future(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    url: str
    files: list[str]  # paths in the repository, sorted
    merge: MergeResult | None  # the merge check, when the merged model was pushed


def default_client(get_token: Callable[[], str | None] | None = None) -> HubClient:
    """`HfApi()`, once a token is known to exist (its value is not looked at) and the Hub is not switched
    off, so that nothing is staged or merged for a push that cannot happen."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub import get_token as hub_get_token

    if (get_token or hub_get_token)() is None:
        raise UserError("no Hugging Face token: pushing needs one with write access",
                        fix="set HF_TOKEN to a write token (https://huggingface.co/settings/tokens) or run "
                            "`hf auth login`")
    if constants.HF_HUB_OFFLINE:
        raise UserError("HF_HUB_OFFLINE is set, so the Hub cannot be reached", fix="unset HF_HUB_OFFLINE")
    return HfApi()


def push_run(run_dir: str | Path, repo_id: str | None = None, merged: bool | None = None,
             private: bool | None = None, client: HubClient | None = None, gguf: str | None = None) -> PushResult:
    """Create the repository if needed and upload the run's adapter (or merged model) with its card; on
    success record the push in `run_dir/hub_push.json`. What is not given comes from the run's `hub`
    section, else: no merge, and a new repository gets its owner's default visibility. `gguf` (f16, bf16,
    q8_0) also uploads the run exported as a GGUF file of that type and its Ollama `Modelfile`."""
    run_dir = Path(run_dir)
    hub = read_run_config(run_dir).hub
    check_records(run_dir)  # the card and the uploaded files are made from them
    repo_id = repo_id or (hub.repo_id if hub else None)
    merged = merged if merged is not None else bool(hub and hub.merged)
    private = private if private is not None else (hub.private if hub else None)
    if repo_id is None or not REPO_ID.match(repo_id):
        raise UserError(f"no repository to push to (got {repo_id!r}): it must be OWNER/NAME",
                        fix="give --repo-id alice/my-model, or set hub.repo_id in the run's config")
    client = client or default_client()
    with staged(run_dir, repo_id, merged, gguf) as (folder, merge):
        assert_no_secrets(folder)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        try:
            client.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            client.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                 commit_message=f"Upload {_what(run_dir, merge)} trained with multitune")
        except Exception as e:
            raise push_error(e, repo_id) from None
    result = PushResult(repo_id, f"https://huggingface.co/{repo_id}", files, merge)
    write_json_atomic(run_dir / PUSH_RECORD, {"repo_id": repo_id, "url": result.url, "merged": merge is not None,
                                              "files": files, "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return result


def _what(run_dir: Path, merge: MergeResult | None) -> str:
    if merge is not None:
        return "merged model"
    return "model" if read_run_config(run_dir).adapter.method == "full" else "adapter"


@contextmanager
def staged(run_dir: Path, repo_id: str, merged: bool, gguf: str | None = None
           ) -> Iterator[tuple[Path, MergeResult | None]]:
    """A temporary folder (inside the run folder, so files are hard links, not copies) holding exactly
    what the repository receives; removed afterwards."""
    cfg = read_run_config(run_dir)
    folder = Path(tempfile.mkdtemp(dir=run_dir, prefix=".push-"))
    try:
        merge = None
        if merged and cfg.adapter.method != "full":
            merge = merge_run(run_dir, folder)
        else:  # an adapter, or the whole model of a full fine-tune
            _link_tree(run_dir / "adapter", folder)
        for source, name in RUN_FILES.items():
            if (run_dir / source).is_file():
                _link(run_dir / source, folder / name)
        if (run_dir / "plots").is_dir():
            _link_tree(run_dir / "plots", folder / "plots")
        gguf_file = None
        if gguf is not None:  # after the merge, which wants the folder empty
            from multitune.export.to_gguf import export_gguf, gguf_file_name

            gguf_file = gguf_file_name(repo_id, gguf)
            export_gguf(run_dir, folder / gguf_file, gguf)
        (folder / "README.md").write_text(model_card(run_dir, repo_id, merged=merge is not None, gguf_file=gguf_file),
                                          encoding="utf-8")
        yield folder, merge
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def assert_no_secrets(folder: Path, env: Mapping[str, str] | None = None,
                      get_token: Callable[[], str | None] | None = None) -> None:
    """Refuse to upload a folder in which any file holds the value of a secret (the Hub token, from the
    environment or the login cache, or another known key), e.g. pasted into a system prompt. The error
    names the file and the variable, never the value."""
    if get_token is None:
        from huggingface_hub import get_token
    env = os.environ if env is None else env
    secrets = {name: env[name] for name in SECRET_ENV if env.get(name)}
    if token := get_token():
        secrets.setdefault("the Hugging Face token", token)
    secrets = {name: value.encode() for name, value in secrets.items() if len(value) >= 8}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.stat().st_size > SCAN_LIMIT_BYTES:
            continue
        data = path.read_bytes()
        for name, value in secrets.items():
            if value in data:
                raise UserError(f"{path.relative_to(folder)} would upload the value of {name}; nothing was pushed",
                                fix="remove the secret from the run's config or files (and revoke it if it was "
                                    "ever shared), then push again")


def push_error(e: BaseException, repo_id: str) -> UserError:
    """What to do about a failed push, from the Hub's error type and HTTP status."""
    from huggingface_hub import errors as hf

    causes = list(_causes(e))
    status = next((x.response.status_code for x in causes if isinstance(x, hf.HfHubHTTPError)), None)
    owner = repo_id.split("/")[0]
    if any(isinstance(x, hf.OfflineModeIsEnabled) for x in causes):
        return UserError("HF_HUB_OFFLINE is set, so the Hub cannot be reached", fix="unset HF_HUB_OFFLINE")
    if status == 401:
        return UserError("the Hub refused the token (401)", fix="set HF_TOKEN to a valid token or `hf auth login`")
    if status == 403:
        return UserError(f"the token may not create or write repositories of {owner!r} (403)",
                         fix=f"use a token with write access to {owner!r}, or push under your own name")
    if any(no_connection(x) for x in causes):
        return UserError("could not reach the Hugging Face Hub", fix="check the network and try again")
    return UserError(f"pushing to {repo_id} failed: {type(e).__name__}: {e}")


def after_training(cfg: RunConfig, client: HubClient | None = None) -> PushResult | None:
    """The end of a run, on the main process: write the model card (`README.md`) into the run folder, then
    push when `hub.push_at_end` asks for it. A failed push says the run itself is safe and how to retry."""
    out, hub = Path(cfg.output_dir), cfg.hub
    write_model_card(out, hub.repo_id if hub else None, merged=bool(hub and hub.merged))
    if hub is None or not hub.push_at_end:
        return None
    try:
        result = push_run(out, hub.repo_id, merged=hub.merged, private=hub.private, client=client)
    except UserError as e:
        retry = f"multitune push {out} --repo-id {hub.repo_id}{' --merged' if hub.merged else ''}"
        raise UserError(f"training finished and is saved in {out}, but the push failed: {e.what}",
                        fix=f"{e.fix + '; then ' if e.fix else ''}run `{retry}`") from None
    print(f"pushed to {result.url}")
    return result


def preflight(cfg: RunConfig, get_token: Callable[[], str | None] | None = None) -> None:
    """Fail before training, not after it, when the config will push and no token exists."""
    if cfg.hub is not None and (cfg.hub.push_at_end or cfg.hub.push_checkpoints):
        default_client(get_token)


def _link_tree(source: Path, target: Path) -> None:
    for path in source.rglob("*"):
        if path.is_file():
            _link(path, target / path.relative_to(source))


def _link(source: Path, target: Path) -> None:
    """Hard-link (instant, no extra disk), or copy where links are not possible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
