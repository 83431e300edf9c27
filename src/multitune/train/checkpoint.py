"""Checkpoints that are complete or absent: written to a temporary folder, renamed into place last.

A checkpoint `output_dir/checkpoints/step-<N>/` holds:

    trainable.safetensors   the trainable weights (adapters, or every weight for full fine-tuning)
    optimizer.pt            the optimizer state, whole, keyed by parameter name (tensors and numbers only)
    scheduler.pt            the learning-rate schedule's state (likewise)
    rng-<rank>.pt           python, numpy and torch random states of each process
    state.json              step, tokens seen, best metric, tracker run id, bad-step counters, log sums
    meta.json               world size and the fingerprint of the tokenised data
    config.yaml             the resolved config
    COMPLETE                written last, before the rename

Nothing here unpickles arbitrary objects: weights are safetensors, the rest JSON or tensors loaded with
`torch.load(weights_only=True)`. That is why the format is our own rather than
`torch.distributed.checkpoint`'s: its files load through pickle. Its state-dict functions do serve us:
`get_optimizer_state_dict` / `set_optimizer_state_dict` with full state dicts gather the optimizer
state whole (FSDP shards it like the weights) and put it back in the layout of the live parameters, so
a checkpoint is the same file for CPU, DDP and FSDP runs.

One process reads and writes the shared files: saving gathers each sharded tensor in turn and only the
main process copies it to the CPU; loading reads weights and optimizer state on the main process only
and broadcasts them (scattering each process's shard under FSDP), so no process but one ever holds a
whole copy of a full fine-tuning's weights or optimizer state in memory.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from multitune.errors import DamagedFile, UserError
from multitune.io import check_file, replace_dir_atomic, write_errors
from multitune.models.adapters import gather_for_saving
from multitune.train.collectives import any_process
from multitune.train.state import TrainState

DIRNAME = "checkpoints"
MARKER = "COMPLETE"
STEP_DIR = re.compile(r"^step-(\d+)$")
FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "state.json", "meta.json", "config.yaml")


def root(output_dir: str | Path) -> Path:
    return Path(output_dir) / DIRNAME


def save(
    output_dir: str | Path, accelerator: Any, model: Any, optimizer: Any, scheduler: Any, state: TrainState,
    config_yaml: str, meta: dict[str, Any],
) -> Path:
    """Write the checkpoint of `state.step` on every process and move it into place atomically.

    On a failed write (disk full, no permission) the temporary folder is removed, earlier checkpoints
    are untouched, and a `UserError` says what happened.
    """
    final = root(output_dir) / f"step-{state.step}"
    tmp = root(output_dir) / f".tmp-step-{state.step}"
    # Gathered on every process first: under FSDP these are collectives that all processes must join.
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    weights = gather_for_saving(unwrapped, trainable_only=True, keep=accelerator.is_main_process)
    # Whole tensors on the CPU, on the main process (the others get an empty dict).
    opt_state = get_optimizer_state_dict(unwrapped, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                        cpu_offload=True))
    error: BaseException | None = None
    if accelerator.is_main_process:
        error = _attempt(lambda: _fresh_dir(tmp))
    # Every process reaches each all-reduce below whatever failed, so none is left waiting.
    if not any_process(error is not None, accelerator):
        error = _attempt(lambda: torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt"))
        if accelerator.is_main_process and error is None:
            error = _attempt(lambda: _save_main(tmp, weights, opt_state, scheduler, state, config_yaml, meta))
    if any_process(error is not None, accelerator):
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"could not write the checkpoint of step {state.step}: {error or 'another process failed to write'}",
            where=str(tmp),
            fix="free disk space or fix the folder's permissions; earlier checkpoints are intact, and the "
                "run resumes from the latest of them when started again",
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_dir_atomic(tmp, final)
    accelerator.wait_for_everyone()
    return final


def _attempt(write: Any) -> BaseException | None:
    try:
        write()
    except write_errors() as e:
        return e
    return None


def _fresh_dir(tmp: Path) -> None:
    if tmp.exists():  # left by a run killed while writing this very step
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)


def _save_main(tmp: Path, weights: dict[str, torch.Tensor], opt_state: dict[str, Any], scheduler: Any,
               state: TrainState, config_yaml: str, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file(weights, str(tmp / "trainable.safetensors"))
    torch.save(opt_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "state.json").write_text(json.dumps(state.to_dict(), indent=1))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    (tmp / "config.yaml").write_text(config_yaml)
    _fsync_dir_files(tmp)
    (tmp / MARKER).write_text("")


def _keyed_by_name(sd: dict[str, Any], optimizer: Any, model: Any) -> dict[str, Any]:
    """A saved optimizer state keyed by parameter name. Checkpoints written before multitune used
    `get_optimizer_state_dict` key it by position, the i-th parameter of the optimizer's groups."""
    if all(isinstance(k, str) for k in sd["state"]):
        return sd
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    return {"state": {order[int(i)]: s for i, s in sd["state"].items()},
            "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]} for g in sd["param_groups"]]}


def _fsync_dir_files(folder: Path) -> None:
    for f in folder.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())


def _rng_state() -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first; incomplete ones are ignored."""
    found = []
    folder = root(output_dir)
    if not folder.is_dir():
        return []
    for p in folder.iterdir():
        m = STEP_DIR.match(p.name)
        if m and (p / MARKER).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def check_files(path: Path) -> None:
    """Refuse, with a `DamagedFile`, a checkpoint that has a file missing or cut short (by a copy or sync
    that was interrupted: the checkpoint's own writes are complete or absent). Only headers and
    directories are read, so this is cheap next to loading."""
    for name in FILES:
        if not (path / name).is_file():
            raise DamagedFile(path / name, "missing")
    for f in sorted(path.iterdir()):
        check_file(f)


def read_meta(path: Path) -> tuple[TrainState, dict[str, Any], str]:
    """(state, meta, config yaml) of a checkpoint, once all its files are checked (`check_files`); raises
    ValueError naming the file when one is missing, damaged or cannot be read."""
    try:
        check_files(path)
    except DamagedFile as e:
        raise ValueError(f"{e.path.name} is damaged or incomplete ({e.reason})") from None
    try:
        state = TrainState.from_dict(json.loads((path / "state.json").read_text()))
        meta = json.loads((path / "meta.json").read_text())
        return state, meta, (path / "config.yaml").read_text()
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None


def load(path: Path, accelerator: Any, model: Any, optimizer: Any, scheduler: Any) -> TrainState:
    """Restore weights, optimizer, schedule and this process's random state from a checkpoint.

    Weights and optimizer state are read by the main process and broadcast. Raises ValueError on every
    process when a file is missing, unreadable or does not fit the model (all processes agree first).
    """
    state, _, _ = read_meta(path)
    plain = accelerator.unwrap_model(model, keep_torch_compile=False)
    params = {n: p for n, p in plain.named_parameters() if p.requires_grad}
    error: str | None = None
    weights: dict[str, torch.Tensor] = {}
    opt_state: dict[str, Any] = {}
    try:
        sched_state = torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True)
        rng_file = path / f"rng-{accelerator.process_index}.pt"
        rng = torch.load(rng_file, weights_only=True) if rng_file.is_file() else None
        if accelerator.is_main_process:
            weights, opt_state = _read_main(path, optimizer, plain, params)
    except Exception as e:  # safetensors and torch raise their own types for truncated or corrupt files
        error = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
    if any_process(error is not None, accelerator):
        raise ValueError(error or "the main process could not load it")
    # Everything was read and checked above: from here on nothing fails half-way through.
    _broadcast_into(params, weights, accelerator)
    set_optimizer_state_dict(plain, optimizer, opt_state, options=StateDictOptions(
        full_state_dict=True, broadcast_from_rank0=accelerator.num_processes > 1))
    scheduler.load_state_dict(sched_state)
    if rng is not None:  # a process count change leaves some ranks without one; resume refuses that anyway
        _set_rng_state(rng)
    return state


def _read_main(path: Path, optimizer: Any, model: Any, params: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """The checkpoint's weights and optimizer state (keyed by name), checked against the model."""
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    opt_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    _check_fit(weights, params)
    try:
        opt_state = _keyed_by_name(opt_state, optimizer, model)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"the optimizer state does not fit the model ({type(e).__name__}: {e})") from None
    if not opt_state["state"].keys() <= params.keys():
        raise ValueError(f"the optimizer state names parameters the model does not train: "
                         f"{sorted(opt_state['state'].keys() - params.keys())[:3]}")
    return weights, opt_state


@torch.no_grad()
def _broadcast_into(params: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], accelerator: Any) -> None:
    """Copy `weights` (whole tensors, held by the main process only when there are several) into
    `params` on every process, one tensor at a time: a sharded parameter gets its shard scattered from
    process 0, any other one the whole tensor broadcast."""
    for name, p in params.items():
        value = weights.get(name)
        if value is None:  # not the main process: a buffer of the right shape to receive into
            value = torch.empty(p.shape, dtype=p.dtype)
        value = value.to(device=p.device, dtype=p.dtype)
        if hasattr(p, "device_mesh"):
            from torch.distributed.tensor import distribute_tensor

            p.copy_(distribute_tensor(value, p.device_mesh, p.placements, src_data_rank=0))
            continue
        if accelerator.num_processes > 1:
            torch.distributed.broadcast(value, src=0)
        p.copy_(value)


def _check_fit(weights: dict[str, torch.Tensor], params: dict[str, torch.Tensor]) -> None:
    if weights.keys() != params.keys():
        missing, extra = sorted(params.keys() - weights.keys()), sorted(weights.keys() - params.keys())
        raise ValueError(f"weights do not fit the model (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, p in params.items():
        if weights[name].shape != p.shape:  # a DTensor reports its global shape
            raise ValueError(f"{name} has shape {tuple(weights[name].shape)}, the model {tuple(p.shape)}")


def prepare_output_dir(out: Path) -> list[Path]:
    """Create output_dir (or say why it cannot be written) and drop checkpoint writes cut by a kill, which
    are returned."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".multitune-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the output folder: {e.strerror}", where=str(out),
                        fix="choose a writable output_dir, or fix the folder's permissions or free space") from None
    return remove_partial(out)


def remove_partial(output_dir: str | Path) -> list[Path]:
    """Delete temporary folders left by writes that were killed; returns what was removed."""
    folder = root(output_dir)
    if not folder.is_dir():
        return []
    removed = [*folder.glob(".tmp-step-*"), *folder.glob(".old-step-*")]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def rotate(output_dir: str | Path, keep_last: int | None, best_step: int | None) -> list[Path]:
    """Delete complete checkpoints beyond the newest `keep_last`, always keeping the best one.

    Returns the deleted folders. The newest checkpoint is always kept, so a run is never left without
    a complete one.
    """
    if keep_last is None:
        return []
    done = complete_checkpoints(output_dir)
    keep = {step for step, _ in done[-keep_last:]} | ({best_step} if best_step is not None else set())
    deleted = []
    for step, path in done:
        if step not in keep:
            # Remove the marker first: a kill during rmtree leaves an incomplete folder, never a
            # complete-looking half one.
            (path / MARKER).unlink(missing_ok=True)
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(path)
    return deleted
