"""A finished run's folder, opened through one door that checks every file before anything loads.

Every verb that reads a run (`eval`, `predict`, `merge`, `export`, `push`, `chat`, `serve`) opens it with
`open_run`, which reads `config.yaml` and checks the model folder `adapter/` and `data_stats.json`; the
verbs that read or rebuild the evaluation records (`eval`, `push`) also call `check_records`. A file cut
short by an interrupted copy or sync (safetensors whose tensors run past the end, JSON or YAML that does
not parse, an empty file, a chat template that does not compile) or a missing one is refused by name,
with what to do, before any model loads and before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from multitune import config
from multitune.config.schema import RunConfig
from multitune.errors import DamagedFile, UserError
from multitune.io import check_file, check_yaml, read_json

RUN_FIX = ("copy the run folder again from the machine that trained it (an interrupted copy or sync leaves files "
           "cut short); if the original is damaged too, run `multitune train CONFIG` there again: it resumes "
           "from the newest complete checkpoint")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class RunFolder:
    """A run folder whose files were checked: its resolved config and where its model is."""

    path: Path
    cfg: RunConfig
    base_name: str | None
    """The base model the adapter was trained on (adapter_config.json); None for a fully fine-tuned run."""

    @property
    def model_dir(self) -> Path:
        """The adapter, or the whole model of a full fine-tune, with the tokenizer beside it."""
        return self.path / "adapter"

    @property
    def is_adapter(self) -> bool:
        return self.base_name is not None


def open_run(run_dir: str | Path) -> RunFolder:
    """The finished run in `run_dir`, after checking `config.yaml`, every file of `adapter/` and
    `data_stats.json`. Raises `UserError` for a folder that holds no finished run, `DamagedFile` (naming
    the file, with `RUN_FIX`) for one that is cut short, empty, unreadable or missing."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "adapter").is_dir():
        raise UserError(f"{run_dir} is not a finished run (no config.yaml or adapter/)",
                        fix="pass the output_dir of a run that `multitune train` completed")
    try:
        cfg = read_config(run_dir / "config.yaml")
        base_name = check_model_folder(run_dir / "adapter")
        if (run_dir / "data_stats.json").is_file():
            check_file(run_dir / "data_stats.json")
    except DamagedFile as e:
        raise e.with_fix(RUN_FIX) from None
    return RunFolder(run_dir, cfg, base_name)


def read_config(path: Path) -> RunConfig:
    """The resolved config multitune wrote into a run or checkpoint folder; `DamagedFile` when the file
    is cut short or no longer validates."""
    check_yaml(path)
    try:
        return config.load(path)
    except UserError as e:
        raise DamagedFile(path, f"it does not hold the run config multitune wrote: {e.what}") from None


def check_records(run_dir: str | Path, eval_dir: str | Path | None = None) -> None:
    """Check the files the report and the model card are built from (the evaluation's `metrics.json`,
    `predictions.jsonl` and `details.json` in `eval_dir`, default `run_dir/eval`; with the run's own, the
    training curves' `metrics.jsonl`): a verb that rewrites or uploads them checks them before it starts,
    so that it never fails half-way with some of them rewritten."""
    run_dir = Path(run_dir)
    eval_dir = Path(eval_dir) if eval_dir is not None else run_dir / "eval"
    files = [eval_dir / "metrics.json", *sorted(eval_dir.glob("*/predictions.jsonl")),
             *sorted(eval_dir.glob("*/details.json"))]
    if eval_dir == run_dir / "eval":  # the report is rebuilt from it too
        files.insert(0, run_dir / "metrics.jsonl")
    try:
        for path in files:
            if path.is_file():
                check_file(path)
    except DamagedFile as e:
        raise e.with_fix(RUN_FIX) from None


def check_model_folder(folder: Path) -> str | None:
    """Check a folder written by `save_pretrained` (an adapter, or a whole model): its config, weights and
    tokenizer files are there, and every JSON, safetensors and chat template file in it is complete.
    Returns the adapter's base model, or None for a whole model."""
    names = {p.name for p in folder.iterdir()}
    if "adapter_config.json" in names:
        weights = ADAPTER_WEIGHTS
    elif "config.json" in names:
        weights = MODEL_WEIGHTS
    else:
        raise DamagedFile(folder / "adapter_config.json", "missing (nor is there a config.json: this folder holds "
                                                          "neither an adapter nor a model)")
    if not names & set(weights):
        raise DamagedFile(folder / weights[0], "missing: the folder holds no weights")
    if "tokenizer_config.json" not in names:
        raise DamagedFile(folder / "tokenizer_config.json", "missing: the folder holds no tokenizer")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        check_file(path)
        if path.suffix == ".jinja":
            _check_template(path)
    for index in names & {"model.safetensors.index.json", "pytorch_model.bin.index.json"}:
        for shard in sorted(set(read_json(folder / index).get("weight_map", {}).values())):
            if not (folder / shard).is_file():
                raise DamagedFile(folder / shard, f"missing, although {index} lists it")
    if "adapter_config.json" not in names:
        return None
    base = read_json(folder / "adapter_config.json")
    if not isinstance(base, dict) or not isinstance(base.get("base_model_name_or_path"), str):
        raise DamagedFile(folder / "adapter_config.json", "it names no base model (base_model_name_or_path)")
    return base["base_model_name_or_path"]


def _check_template(path: Path) -> None:
    """A chat template cut short is a Jinja syntax error; found here rather than at the first message."""
    from jinja2 import TemplateError

    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # moved in another transformers: the template is checked when first rendered
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise DamagedFile(path, "the file is empty")
    try:
        _compile_jinja_template(text)  # with the extensions transformers renders templates with
    except TemplateError as e:
        raise DamagedFile(path, f"the chat template does not compile ({e})") from None
