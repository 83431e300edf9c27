"""Where a task's rows come from: `demo:<name>`, a local file or folder, or a Hugging Face Hub dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from multitune.errors import UserError

LOCAL_FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_rows(cfg: Any) -> Any:
    """The rows of one task as a `datasets.Dataset`, capped at `cfg.max_rows`."""
    import datasets

    source: str = cfg.source
    if source.startswith("demo:"):
        rows = _demo(source.removeprefix("demo:"), cfg.name)
    elif Path(source).expanduser().exists():
        rows = _local(Path(source).expanduser(), cfg.split, cfg.name)
    elif _looks_like_path(source):
        raise UserError(f"data file not found: {source}", where=f"task {cfg.name}",
                        fix=f"check tasks.{cfg.name}.source (paths are relative to where you run multitune)")
    else:
        rows = _hub(source, cfg)
    assert isinstance(rows, datasets.Dataset)
    if cfg.max_rows is not None and len(rows) > cfg.max_rows:
        rows = rows.select(range(cfg.max_rows))
    if len(rows) == 0:
        raise UserError(f"no rows in {source!r} (split {cfg.split!r})", where=f"task {cfg.name}")
    return rows


def _demo(name: str, task: str) -> Any:
    import datasets

    from multitune.data.demo import DATASETS

    if name not in DATASETS:
        raise UserError(f"unknown demo dataset {name!r}", where=f"task {task}",
                        fix=f"use one of: {', '.join('demo:' + n for n in DATASETS)}")
    return datasets.Dataset.from_list(DATASETS[name]())


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).suffix.lower() in LOCAL_FORMATS or os.sep * 2 in source


def _local(path: Path, split: str, task: str) -> Any:
    import datasets

    if path.is_dir():
        raise UserError(f"{path} is a folder; reading folders comes with the data layer",
                        where=f"task {task}", fix="point the source at one csv/jsonl/json/parquet file")
    fmt = LOCAL_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"unsupported file type {path.suffix!r}", where=str(path),
                        fix=f"use one of {', '.join(LOCAL_FORMATS)}")
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        return datasets.load_dataset(fmt, data_files={split: str(path)}, split=split, **kwargs)
    except Exception as e:  # datasets wraps parser errors in many types; the user needs the file and the cause
        raise UserError(f"could not read the file: {_root_cause(e)}", where=str(path)) from None


def _hub(dataset_id: str, cfg: Any) -> Any:
    import datasets

    try:
        return datasets.load_dataset(dataset_id, split=cfg.split, revision=None)
    except Exception as e:
        raise UserError(
            f"could not load {dataset_id!r} from the Hugging Face Hub: {_root_cause(e)}",
            where=f"task {cfg.name}",
            fix="check the id and your network; for a gated dataset accept its terms on the Hub page and "
                "log in with `huggingface-cli login` or set HF_TOKEN; for local data give a file path",
        ) from None


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {e}"
