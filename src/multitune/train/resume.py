"""Where a run starts: fresh, or from a checkpoint whose config and data still fit.

`checkpoint.resume: auto` takes the newest complete checkpoint in `output_dir` that loads; incomplete or
corrupt ones (a file missing or cut short, say by an interrupted copy) are skipped with a warning naming
the file, and the one before is tried. A checkpoint given by path must load. A checkpoint made with a
different model, data, batch geometry or seed is refused with the list of differences (training would
silently become another run), unless `--force`.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import yaml

from multitune.data.prepare import Prepared
from multitune.errors import UserError
from multitune.runtime import print0
from multitune.train import checkpoint
from multitune.train.state import TrainState

# Sections that do not change what training computes: they may differ on resume.
FREE_SECTIONS = ("logging", "eval", "checkpoint", "output_dir")


def data_fingerprint(prepared: Prepared) -> str:
    """A hash of the tokenised training and validation data, in order: what the model sees."""
    h = hashlib.sha256()
    for name, ex_list in [("train", prepared.train), *sorted(prepared.val.items())]:
        h.update(name.encode())
        for ex in ex_list:
            h.update(repr((ex.input_ids, ex.labels, ex.task_id)).encode())
    return h.hexdigest()


def restore(
    mode: str, output_dir: Path, accelerator: Any, model: Any, optimizer: Any, scheduler: Any,
    meta: dict[str, Any], config_yaml: str, force: bool,
) -> tuple[TrainState, Path | None]:
    """Load the checkpoint to resume from, if any, into model/optimizer/scheduler/RNG.

    Returns (state, checkpoint path) or (fresh state, None).
    """
    if mode == "never":
        existing = checkpoint.complete_checkpoints(output_dir)
        if existing:
            raise UserError(
                f"{output_dir} already holds checkpoints of a run (latest: {existing[-1][1].name}) and "
                "checkpoint.resume is never: a fresh run there would mix with them",
                fix="use another output_dir, delete its checkpoints folder, or set checkpoint.resume=auto",
            )
        return TrainState(), None
    candidates = _candidates(mode, output_dir)
    for path in candidates:
        try:
            _, saved_meta, saved_yaml = checkpoint.read_meta(path)
        except ValueError as e:
            _skip(mode, accelerator, path, str(e))
            continue
        problems = differences(saved_yaml, config_yaml, saved_meta, meta)
        if problems and not force:
            raise _changed(output_dir, path, problems)
        try:
            state = checkpoint.load(path, accelerator, model, optimizer, scheduler)
        except ValueError as e:
            _skip(mode, accelerator, path, f"it cannot be loaded ({e})")
            continue
        return state, path
    if candidates:
        _warn(accelerator, "no usable checkpoint: starting from the beginning")
    return TrainState(), None


def _skip(mode: str, accelerator: Any, path: Path, reason: str) -> None:
    """Under `auto`, warn and let the caller try the checkpoint before; a checkpoint named by path is refused."""
    if mode != "auto":
        raise UserError(f"cannot resume from this checkpoint: {reason}", where=str(path),
                        fix="point checkpoint.resume at another checkpoints/step-<N> folder, or set "
                            "checkpoint.resume=auto to take the newest one that is complete")
    _warn(accelerator, f"skipping checkpoint {path}: {reason}; trying the one before")


def refuse_changed_config(mode: str, output_dir: Path, config_yaml: str, force: bool) -> None:
    """Fail fast, before data and model are loaded, when the newest checkpoint's config differs in a way
    that changes training (the data fingerprint is checked later, once the data is tokenised)."""
    if mode != "auto" or force:
        return
    done = checkpoint.complete_checkpoints(output_dir)
    if not done:
        return
    try:
        _, saved_meta, saved_yaml = checkpoint.read_meta(done[-1][1])
    except ValueError:
        return  # restore() skips it with a warning and looks further
    problems = [p for p in differences(saved_yaml, config_yaml, {}, {}) if not p.startswith(("processes", "data"))]
    if problems:
        raise _changed(output_dir, done[-1][1], problems)


def _changed(output_dir: Path, path: Path, problems: list[str]) -> UserError:
    return UserError(
        f"the run in {output_dir} was made with another setup than this one, so resuming it "
        "would not continue the same training:\n" + "\n".join(f"  - {p}" for p in problems),
        where=str(path),
        fix="use a new output_dir for a new run, restore the old settings, or pass --force to resume anyway",
    )


def _candidates(mode: str, output_dir: Path) -> list[Path]:
    if mode == "auto":
        return [path for _, path in reversed(checkpoint.complete_checkpoints(output_dir))]
    path = Path(mode).expanduser()
    if not (path / checkpoint.MARKER).is_file():
        raise UserError(f"{path} is not a complete checkpoint (no {checkpoint.MARKER} marker)",
                        fix="point checkpoint.resume at a checkpoints/step-<N> folder, or use auto")
    return [path]


def differences(saved_yaml: str, current_yaml: str, saved_meta: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Human-readable differences that change training, between a checkpoint and the current run."""
    saved, current = _flat(yaml.safe_load(saved_yaml)), _flat(yaml.safe_load(current_yaml))
    out = []
    for key in sorted(saved.keys() | current.keys()):
        if key.split(".")[0] in FREE_SECTIONS:
            continue
        if saved.get(key, "(unset)") != current.get(key, "(unset)"):
            out.append(f"{key}: {saved.get(key, '(unset)')!r} in the checkpoint, {current.get(key, '(unset)')!r} now")
    if saved_meta.get("world_size") != meta.get("world_size"):
        out.append(f"processes: {saved_meta.get('world_size')} in the checkpoint, {meta.get('world_size')} now "
                   "(the global batch would change)")
    if saved_meta.get("data_fingerprint") != meta.get("data_fingerprint"):
        out.append("data: the tokenised training/validation data differ (rows, template or tokenizer changed)")
    return out


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {dotted.key: value}; tasks are keyed by name (tasks[claims].source)."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and obj and all(isinstance(t, dict) and "name" in t for t in obj):
        for t in obj:
            out.update(_flat(t, f"{prefix}[{t['name']}]"))
    else:
        out[prefix] = obj
    return out


def _warn(accelerator: Any, message: str) -> None:
    print0(accelerator, f"warning: {message}", file=sys.stderr, flush=True)
