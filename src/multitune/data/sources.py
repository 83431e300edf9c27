"""Where a task's rows come from: `demo:<name>`, a local file, a folder of files, a `save_to_disk` folder,
or a Hugging Face Hub dataset. Every source ends as a `datasets.Dataset`; every failure as a `UserError`
that names the file (and line) or the Hub id and says what to do.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from multitune.data.diagnose import COMPRESSED, check_file, read_error, root_cause
from multitune.errors import UserError, hub_error

LOCAL_FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# A Hub id is `name` or `owner/name`; anything else that does not exist is a mistyped local path.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def source_kind(source: str) -> Literal["demo", "local", "hub"]:
    """Where a task's rows (or a model) come from: `demo:<name>`, a path on this machine (it exists, or
    cannot be a Hub id: `./`, `/`, `~`, a data file's suffix), or a Hub id. The one place that decides.

    >>> source_kind("demo:claims"), source_kind("./train.csv"), source_kind("PolyAI/banking77")
    ('demo', 'local', 'hub')
    """
    if source.startswith("demo:"):
        return "demo"
    path = Path(source).expanduser()
    if path.exists() or not HUB_ID.match(source) or path.suffix.lower() in LOCAL_FORMATS:
        return "local"
    return "hub"


def load_rows(cfg: Any, split: str | None = None) -> Any:
    """The rows of one task's `split` (default: `cfg.split`) as a `datasets.Dataset`, capped at
    `cfg.max_rows`. Refuses an empty result."""
    import datasets

    split = cfg.split if split is None else split
    source: str = cfg.source
    path = Path(source).expanduser()
    where = source_kind(source)
    with _quiet_datasets():
        if where == "demo":
            rows = _demo(source.removeprefix("demo:"), cfg.name)
        elif path.exists():
            rows = _local(path, split, cfg.name)
        elif where == "local":
            raise UserError(f"data file not found: {source} (looked in {path.resolve().parent})",
                            where=f"task {cfg.name}",
                            fix=f"check tasks.{cfg.name}.source (paths are relative to where you run multitune)")
        else:
            rows = _hub(source, split, cfg)
    assert isinstance(rows, datasets.Dataset)
    if cfg.max_rows is not None and len(rows) > cfg.max_rows:
        rows = rows.select(range(cfg.max_rows))
    if len(rows) == 0:
        raise UserError(f"no rows in {source!r} (split {split!r})", where=f"task {cfg.name}",
                        fix="point the task at a split or file that holds rows")
    return rows


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """`datasets` logs a parser error before raising it; we raise our own message, so hide theirs."""
    from datasets.utils import logging as ds_logging

    level = ds_logging.get_verbosity()
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)


def _demo(name: str, task: str) -> Any:
    import datasets

    from multitune.data.demo import DATASETS

    if name not in DATASETS:
        raise UserError(f"unknown demo dataset {name!r}", where=f"task {task}",
                        fix=f"use one of: {', '.join('demo:' + n for n in DATASETS)}")
    return datasets.Dataset.from_list(DATASETS[name]())


def file_format(path: Path) -> str | None:
    """`csv`, `json` or `parquet` from the name (`rows.jsonl.gz` is json), None when unsupported."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    return LOCAL_FORMATS.get(suffixes[-1]) if suffixes else None


def _is_tsv(path: Path) -> bool:
    return ".tsv" in [s.lower() for s in path.suffixes]


def _local(path: Path, split: str, task: str) -> Any:
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _saved(path, split, task)
        return _folder(path, split, task)
    return _file(path, split)


def _file(path: Path, split: str) -> Any:
    """One file, read as `split` whatever its name (a slice such as `train[:100]` applies to it)."""
    import datasets

    fmt = file_format(path)
    if fmt is None:
        raise UserError(f"unsupported file type {''.join(path.suffixes) or '(no extension)'}", where=str(path),
                        fix=f"use one of {', '.join(LOCAL_FORMATS)} (optionally compressed, e.g. .jsonl.gz)")
    check_file(path)
    name = _split_name(split)
    kwargs = {"delimiter": "\t"} if _is_tsv(path) else {}
    try:
        return datasets.load_dataset(fmt, data_files={name: str(path)}, split=split, **kwargs)
    except Exception as e:  # datasets wraps parser errors in many types; find the file's real problem
        raise read_error(path, fmt, e) from None


def _split_name(split: str) -> str:
    """`train[:80%]` -> `train`: the name a file is registered under so that the slice applies to it."""
    name = split.split("[", 1)[0].strip()
    return name if re.fullmatch(r"\w+", name) else "train"


def _folder(path: Path, split: str, task: str) -> Any:
    """A folder of data files of one format; splits come from the file names (`train.csv`,
    `validation.csv`, ...) as in `datasets`, a folder of other names is all one `train` split."""
    import datasets

    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(path).parts) and file_format(p))
    formats = sorted({(file_format(p), _is_tsv(p)) for p in files})
    if not files:
        raise UserError("the folder holds no data files", where=str(path),
                        fix=f"put {', '.join(LOCAL_FORMATS)} files in it, or point the source at a file")
    if len(formats) > 1:
        kinds = sorted({"".join(p.suffixes) for p in files})
        raise UserError(f"the folder mixes file types ({', '.join(kinds)}): which one holds the rows is ambiguous",
                        where=str(path), fix=f"point tasks.{task}.source at one of the files")
    fmt, tsv = formats[0]
    for p in files:
        check_file(p)
    try:
        return datasets.load_dataset(fmt, data_dir=str(path), split=split, **({"delimiter": "\t"} if tsv else {}))
    except ValueError as e:
        if "Unknown split" in str(e):
            raise UserError(f"{e}", where=str(path),
                            fix=f"set tasks.{task}.split (or val_split) to one of those; splits come from file "
                                "names such as train.csv / validation.csv") from None
        raise _first_file_problem(files, fmt, e) from None
    except Exception as e:
        raise _first_file_problem(files, fmt, e) from None


def _first_file_problem(files: list[Path], fmt: str, error: BaseException) -> UserError:
    for p in files:
        problem = read_error(p, fmt, error)
        if problem.where and problem.where != str(p):  # located: names a line of this file
            return problem
    return UserError(f"could not read the folder as {fmt}: {root_cause(error)}", where=str(files[0].parent))


def _saved(path: Path, split: str, task: str) -> Any:
    """A folder written by `Dataset.save_to_disk` (one split, taken whatever its name) or
    `DatasetDict.save_to_disk` (split chosen by name)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:
        raise UserError(f"could not read the saved dataset: {root_cause(e)}", where=str(path)) from None
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if split not in loaded:
        raise UserError(f"split {split!r} is not in the saved dataset; it has {', '.join(loaded)}", where=str(path),
                        fix=f"set tasks.{task}.split (or val_split) to one of those")
    return loaded[split]


def _hub(dataset_id: str, split: str, cfg: Any) -> Any:
    import datasets

    try:
        # token=None: huggingface_hub reads HF_TOKEN or the `huggingface-cli login` token itself.
        return datasets.load_dataset(dataset_id, name=cfg.config_name, split=split, revision=cfg.revision,
                                     token=None)
    except Exception as e:
        raise hub_dataset_error(e, dataset_id, cfg) from None


def hub_dataset_error(e: BaseException, dataset_id: str, cfg: Any) -> UserError:
    """`errors.hub_error`, plus what `datasets` says in words only: it re-raises the Hub's gated /
    not-found errors as `DatasetNotFoundError` without their type, and asks for a config or split by text."""
    from datasets.exceptions import DatasetNotFoundError

    msg = str(e)
    url = f"https://huggingface.co/datasets/{dataset_id}"
    login = "log in with `huggingface-cli login` or set HF_TOKEN"
    where = f"task {cfg.name}"
    if isinstance(e, DatasetNotFoundError):
        if "gated" in msg:
            return UserError(f"dataset {dataset_id!r} is gated: its terms must be accepted before download",
                             where=where, fix=f"accept the terms at {url} with your account, then {login}")
        if "Revision" in msg:
            return UserError(f"dataset {dataset_id!r} has no revision {cfg.revision!r}", where=where,
                             fix=f"check tasks.{cfg.name}.revision (a branch, tag or commit)")
        return UserError(f"dataset {dataset_id!r} was not found on the Hub, or it is private", where=where,
                         fix=f"check tasks.{cfg.name}.source; if it is private, {login}; for a local file or "
                             "folder, give a path that exists")
    if isinstance(e, ValueError) and ("Unknown split" in msg or "Bad split" in msg):
        return UserError(msg, where=where, fix=f"set tasks.{cfg.name}.split (or val_split) to one of those")
    if isinstance(e, ValueError) and "Config name is missing" in msg:
        configs = re.search(r"available configs: (\[.*?\])", msg)
        return UserError(f"dataset {dataset_id!r} has several configurations"
                         + (f": {configs.group(1)}" if configs else ""),
                         where=where, fix=f"set tasks.{cfg.name}.config_name to one of them")
    translated = hub_error(e, "dataset", dataset_id)
    return UserError(translated.what, where=where, fix=translated.fix)
