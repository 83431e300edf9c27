"""`multitune export RUN_DIR --format gguf`: a finished run as one GGUF file for llama.cpp and Ollama, with an
Ollama `Modelfile` beside it.

The adapter is merged by `multitune merge` (into a temporary folder, with its logit check against base +
adapter), then the merged model is written by `gguf.write_gguf`. A fully fine-tuned run is written as it is.
The architecture and the tokenizer are checked before anything is merged, so an unsupported model is refused
in seconds.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multitune.config.schema import RunConfig
from multitune.errors import UserError, hub_error
from multitune.export.gguf import GgufWritten, check_architecture, write_gguf
from multitune.export.gguf_vocab import vocab_fields
from multitune.export.merge import MergeResult, merge_run
from multitune.export.modelfile import Modelfile, modelfile
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
    if output.exists():
        raise UserError(f"{output} already exists", fix="choose a new --output file, or delete that one first")
    if output.suffix != ".gguf":
        raise UserError(f"--output {output} should end in .gguf (llama.cpp and Ollama look for it)",
                        fix=f"use --output {output.with_suffix('.gguf')}")
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


def gguf_file_name(repo_id: str, type: str) -> str:
    """The GGUF's name in a Hub repository: NAME-TYPE.gguf, the convention Ollama and llama.cpp's `-hf` read
    the type from.

    >>> gguf_file_name("alice/claims-bot", "q8_0")
    'claims-bot-Q8_0.gguf'
    """
    return f"{repo_id.split('/')[-1]}-{type.upper()}.gguf"


def system_prompts(cfg: RunConfig) -> list[str | None]:
    """The system prompt each task trained with (None: no system turn), in the config's task order."""
    from multitune.tasks import KINDS
    from multitune.tasks.base import system_prompt

    return [system_prompt(t, KINDS[t.kind].DEFAULT_SYSTEM) for t in cfg.tasks]


def _config(name: str, cfg: RunConfig) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, revision=cfg.model.revision,
                                          trust_remote_code=cfg.model.trust_remote_code)
    except Exception as e:
        raise hub_error(e, "model", name) from None
