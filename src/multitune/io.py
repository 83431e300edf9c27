"""Small file helpers: writes that are complete or absent, never half-written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """multitune's cache: built tiny models, converted GGUF models, tokenised data (`MULTITUNE_CACHE`,
    default ~/.cache/multitune)."""
    return Path(os.environ.get("MULTITUNE_CACHE", Path.home() / ".cache" / "multitune"))


def write_errors() -> tuple[type[BaseException], ...]:
    """Exception types a failed file write raises: OSError, and safetensors' own error type (it reports
    a full disk as a SafetensorError, not an OSError)."""
    from safetensors import SafetensorError

    return (OSError, SafetensorError)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename, so a
    crash leaves either the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON object as a line and flush it to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def replace_dir_atomic(src: Path, dst: Path) -> None:
    """Move the finished folder `src` to `dst`, replacing what was there.

    A rename cannot replace a non-empty folder, so an existing `dst` is first renamed aside and removed
    after: at every moment `dst` is either the old complete folder or the new one (or, for an instant
    between two renames, absent: never half-written).
    """
    if dst.exists():
        old = dst.with_name(f".old-{dst.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
    fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the renames themselves durable
    finally:
        os.close(fd)
