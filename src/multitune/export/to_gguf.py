"""`multitune export RUN_DIR --format gguf`: a finished run as one GGUF file for llama.cpp and Ollama, with an
Ollama `Modelfile` beside it; `--format gguf-lora`: the LoRA adapter alone as llama.cpp's adapter GGUF, with a
Modelfile that applies it to the base GGUF (`export_gguf_lora`).

The adapter is merged by `multitune merge` (into a temporary folder, with its logit check against base +
adapter), then the merged model is written by `gguf.write_gguf`. A fully fine-tuned run is written as it is.
The architecture and the tokenizer are checked before anything is merged, so an unsupported model is refused
in seconds.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multitune.config.schema import RunConfig
from multitune.errors import UserError, hub_error
from multitune.export.gguf import GgufWritten, check_architecture, write_gguf
from multitune.export.gguf_lora import LoraGgufWritten, check_adapter, write_gguf_lora
from multitune.export.gguf_vocab import vocab_fields
from multitune.export.merge import MergeResult, merge_run
from multitune.export.modelfile import Modelfile, modelfile
from multitune.models import gguf as gguf_base
from multitune.models import load
from multitune.models.run_folder import open_run

MODELFILE = "Modelfile"


@dataclass(frozen=True)
class GgufExport:
    gguf: GgufWritten
    modelfile_path: Path
    modelfile: Modelfile
    merge: MergeResult | None  # the merge's check; None for a fully fine-tuned run


def export_gguf(run_dir: str | Path, output: str | Path, type: str = "f16") -> GgufExport:
    """Write the run in `run_dir` to the GGUF file `output` (new) in `type` (f16, bf16, q8_0), and an Ollama
    `Modelfile` in the same folder (replaced if there is one). Raises `UserError` for a model or tokenizer
    llama.cpp's llama architecture cannot run, or an existing `output`."""
    run_dir, output = Path(run_dir), Path(output)
    run = open_run(run_dir)
    cfg, adapter_dir, is_adapter = run.cfg, run.model_dir, run.is_adapter
    _refuse_output(output)
    base_config = _config(run.base_name or str(adapter_dir), cfg)
    check_architecture(base_config)
    vocab_fields(load.load_tokenizer(str(adapter_dir), cfg.model), base_config.vocab_size)  # refuses early too
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.stem}.merge.") as tmp:
        merge = merge_run(run_dir, Path(tmp) / "merged") if is_adapter else None
        folder = str(merge.output_dir) if merge else str(adapter_dir)
        tokenizer = load.load_tokenizer(folder, cfg.model)
        # In the merge's dtype (16-bit for a 16-bit base): a float32 copy of a large model would double the
        # memory, and write_gguf converts one tensor at a time anyway.
        dtype = str(merge.dtype).removeprefix("torch.") if merge else "float32"
        model = load.load_model(folder, cfg.model.model_copy(update={"dtype": dtype}))
        written = write_gguf(model, tokenizer, output, type, name=run_dir.resolve().name)
    made = modelfile(output.name, tokenizer, system_prompts(cfg))
    path = output.parent / MODELFILE
    path.write_text(made.text, encoding="utf-8")
    return GgufExport(written, path, made, merge)


@dataclass(frozen=True)
class GgufLoraExport:
    adapter: LoraGgufWritten
    base: Path  # the GGUF the adapter applies to (FROM in the Modelfile)
    base_written: GgufWritten | None  # when the base GGUF was written here (a base that is no GGUF file)
    modelfile_path: Path
    modelfile: Modelfile


def export_gguf_lora(run_dir: str | Path, output: str | Path, type: str = "f16",
                     base_gguf: str | Path | None = None) -> GgufLoraExport:
    """Write the run's LoRA adapter to `output` (new) as llama.cpp's adapter GGUF, and an Ollama Modelfile
    (`FROM` the base GGUF, `ADAPTER` this file) beside it. The base: `base_gguf` when given, else the GGUF
    the run trained from (a `.gguf` base, SmolLM2), else the run's base written beside as
    `<output stem>-base-f16.gguf` (the same writer as `--format gguf`, so its tensor names are the adapter's)."""
    run_dir, output = Path(run_dir), Path(output)
    run = open_run(run_dir)
    cfg, adapter_dir, base_name = run.cfg, run.model_dir, run.base_name
    _refuse_output(output)
    if base_name is None:
        raise UserError(f"{run_dir} holds a fully fine-tuned model (adapter.method: full), not an adapter",
                        fix="use --format gguf, which writes the whole model")
    check_adapter(json.loads((adapter_dir / "adapter_config.json").read_text()))
    base_config = _config(base_name, cfg)
    check_architecture(base_config)
    tokenizer = load.load_tokenizer(str(adapter_dir), cfg.model)
    vocab_fields(tokenizer, base_config.vocab_size)  # a base written here must take this tokenizer
    written = write_gguf_lora(adapter_dir, base_config, output, type, name=run_dir.resolve().name)
    base_written = None
    if base_gguf is not None:
        base = Path(base_gguf)
        if not base.is_file() or base.suffix != ".gguf":
            raise UserError(f"--base-gguf {base} is not a .gguf file", fix="pass the GGUF of the run's base model")
    elif cfg.model.is_gguf:
        base = gguf_base.gguf_path(cfg.model.name)
    else:
        base = output.parent / f"{output.stem}-base-f16.gguf"
        _refuse_output(base)
        model = load.load_model(base_name, cfg.model)
        base_written = write_gguf(model, tokenizer, base, "f16", name=Path(base_name).name)
    from_name = base.name if base.resolve().parent == output.resolve().parent else str(base.resolve())
    made = modelfile(from_name, tokenizer, system_prompts(cfg), adapter=output.name)
    path = output.parent / MODELFILE
    path.write_text(made.text, encoding="utf-8")
    return GgufLoraExport(written, base, base_written, path, made)


def _refuse_output(output: Path) -> None:
    if output.exists():
        raise UserError(f"{output} already exists", fix="choose a new --output file, or delete that one first")
    if output.suffix != ".gguf":
        raise UserError(f"--output {output} should end in .gguf (llama.cpp and Ollama look for it)",
                        fix=f"use --output {output.with_suffix('.gguf')}")


def gguf_file_name(repo_id: str, type: str) -> str:
    """The GGUF's name in a Hub repository: NAME-TYPE.gguf, the convention Ollama and llama.cpp's `-hf` read
    the type from.

    >>> gguf_file_name("alice/claims-bot", "q8_0")
    'claims-bot-Q8_0.gguf'
    """
    return f"{repo_id.split('/')[-1]}-{type.upper()}.gguf"


def system_prompts(cfg: RunConfig) -> list[str | None]:
    """The system prompt each task trained with (None: no system turn), in the config's task order."""
    from multitune.tasks import kind

    return [kind(t.kind).system_prompt(t) for t in cfg.tasks]


def _config(name: str, cfg: RunConfig) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, revision=cfg.model.revision,
                                          trust_remote_code=cfg.model.trust_remote_code)
    except Exception as e:
        raise hub_error(e, "model", name) from None
