"""Small file helpers: writes that are complete or absent, never half-written; reads that refuse a file cut
short (what an interrupted copy or sync leaves) with a `DamagedFile` naming it; the cache folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from multitune.errors import DamagedFile


def cache_root() -> Path:
    """Where multitune keeps what it can rebuild (tiny models, tokenised data, converted models):
    `$MULTITUNE_CACHE`, default `~/.cache/multitune`."""
    return Path(os.environ.get("MULTITUNE_CACHE", Path.home() / ".cache" / "multitune"))


def write_errors() -> tuple[type[BaseException], ...]:
    """Exception types a failed file write raises: OSError, and safetensors' own error type (it reports
    a full disk as a SafetensorError, not an OSError)."""
    from safetensors import SafetensorError

    return (OSError, SafetensorError)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically, as `write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename, so a
    crash leaves either the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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


def read_json(path: Path) -> Any:
    """The JSON document in `path`; `DamagedFile` when it is empty, cut short or not JSON."""
    text = _text(path)
    if not text.strip():
        raise DamagedFile(path, "the file is empty")
    try:
        return json.loads(text)
    except ValueError as e:
        raise DamagedFile(path, f"not valid JSON ({e})") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per line; `DamagedFile` naming the first line that is not one (a line cut short)."""
    rows = []
    for number, line in enumerate(_text(path).split("\n"), 1):  # not splitlines: JSON text may hold U+2028
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise DamagedFile(path, f"line {number} is not valid JSON ({e})") from None
    return rows


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DamagedFile(path, "not UTF-8 text") from None


def check_file(path: Path) -> None:
    """Refuse, with a `DamagedFile`, a file whose format says it is incomplete: JSON and JSON lines that do
    not parse, YAML that does not parse or lacks its last line's end, safetensors whose header is unreadable
    or whose tensors run past the end, torch files whose zip directory is missing. Cheap: weights are never
    read, only headers and directories. Files of other kinds pass."""
    if path.suffix == ".json":
        read_json(path)
    elif path.suffix == ".jsonl":
        if not read_jsonl(path):  # multitune never writes an empty one: a run logs its last step
            raise DamagedFile(path, "the file is empty")
    elif path.suffix in (".yaml", ".yml"):
        check_yaml(path)
    elif path.suffix == ".safetensors":
        check_safetensors(path)
    elif path.suffix == ".pt":
        check_torch_file(path)


def check_yaml(path: Path) -> None:
    """A YAML file multitune wrote: not empty, parses, and ends with a line break (yaml.safe_dump always
    writes one; a file cut short almost never ends at one)."""
    import yaml

    text = _text(path)
    if not text.strip():
        raise DamagedFile(path, "the file is empty")
    try:
        yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DamagedFile(path, f"not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not text.endswith("\n"):
        raise DamagedFile(path, "its last line is cut short")


def check_safetensors(path: Path) -> None:
    """A safetensors file: an 8-byte header length, a JSON header, then exactly the bytes its tensors'
    offsets promise (the same rule the safetensors library applies when it opens the file)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise DamagedFile(path, f"{size} bytes, too short to hold a safetensors header")
        length = int.from_bytes(head, "little")
        if length > size - 8:
            raise DamagedFile(path, f"its header should be {length:,} bytes but the file holds {size:,} in all")
        try:
            header = json.loads(f.read(length))
            ends = [int(t["data_offsets"][1]) for name, t in header.items() if name != "__metadata__"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise DamagedFile(path, f"its safetensors header is not readable ({type(e).__name__})") from None
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        raise DamagedFile(path, f"its tensors take {expected:,} bytes but the file holds {size:,}")


def check_torch_file(path: Path) -> None:
    """A file of `torch.save`: a zip archive, whose directory is written last (so a file cut short has none)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        raise DamagedFile(path, f"not a complete torch file ({e})") from None


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
