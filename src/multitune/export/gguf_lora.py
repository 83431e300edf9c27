"""`multitune export RUN --format gguf-lora`: a run's LoRA adapter alone as llama.cpp's adapter GGUF, which
`llama-cli -m BASE.gguf --lora ADAPTER.gguf` and Ollama's `ADAPTER` directive apply to the base at run time,
with the Modelfile that says so (`FROM <base gguf>`, `ADAPTER <adapter gguf>`).

The file is what llama.cpp's `convert_lora_to_gguf.py` writes and `llama_adapter_lora_init` reads:
`general.type: adapter`, `adapter.type: lora`, `adapter.lora.alpha`, and per wrapped weight two tensors
named after it, `blk.N.attn_q.weight.lora_a` (r x in) and `.lora_b` (out x r), in llama.cpp's layout:
`lora_b` of q and k has its rows permuted like the weight's (`gguf.permute_qk`), since B's rows are the
weight's rows. llama.cpp scales the product by alpha / rank (the rank read off `lora_b`), so rsLoRA's
alpha / sqrt(r) is written as the alpha that gives it (llama.cpp's own converter writes peft's alpha as is
and gets rsLoRA adapters wrong).

Only what llama.cpp applies as a low-rank delta goes: a DoRA magnitude, a module trained in full
(`modules_to_save`), an (IA)^3 scale or virtual tokens have no place in the format, and are refused with
the export that does carry them (a merged GGUF).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multitune.errors import UserError
from multitune.export.gguf import check_architecture, gguf_file, gguf_name, permute_qk
from multitune.export.merge import refuse_virtual_tokens

TYPES = {"f16": np.float16, "f32": np.float32}
MERGED = "multitune export RUN --format gguf (the merged model, which holds every trained weight)"


@dataclass(frozen=True)
class LoraGgufWritten:
    path: Path
    type: str
    alpha: float  # adapter.lora.alpha as written: llama.cpp's scale is alpha / rank
    rank: int
    pairs: int  # wrapped weights (each a lora_a and a lora_b tensor)


def check_adapter(adapter_config: dict[str, Any]) -> None:
    """Refuse, naming the way out, an adapter llama.cpp's LoRA format cannot hold exactly."""
    refuse_virtual_tokens(adapter_config, "written as a llama.cpp adapter")
    kind = adapter_config.get("peft_type")
    problems = []
    if kind != "LORA":
        problems.append(f"it is a {kind} adapter; llama.cpp's adapters are LoRA's low-rank products only")
    if adapter_config.get("use_dora"):
        problems.append("it is DoRA: llama.cpp adds B A to a weight and has no place for DoRA's magnitudes")
    if adapter_config.get("modules_to_save"):
        problems.append(f"it trains {', '.join(adapter_config['modules_to_save'])} in full (modules_to_save), "
                        "which is no low-rank product")
    if adapter_config.get("bias", "none") != "none":
        problems.append(f"it trains biases (bias: {adapter_config['bias']})")
    if adapter_config.get("rank_pattern") or adapter_config.get("alpha_pattern"):
        problems.append("its rank or alpha differ by layer; llama.cpp's adapter has one alpha")
    if problems:
        raise UserError("this run's adapter cannot be a llama.cpp LoRA adapter: " + "; ".join(problems),
                        fix=f"use {MERGED}, or train with adapter.method=lora and no modules_to_save")


def llama_cpp_alpha(adapter_config: dict[str, Any]) -> float:
    """The alpha that makes llama.cpp's alpha / r equal peft's scale (alpha / sqrt(r) under rsLoRA).

    >>> llama_cpp_alpha({"r": 16, "lora_alpha": 32}), llama_cpp_alpha({"r": 16, "lora_alpha": 32, "use_rslora": True})
    (32.0, 128.0)
    """
    r, alpha = adapter_config["r"], float(adapter_config["lora_alpha"])
    return alpha * math.sqrt(r) if adapter_config.get("use_rslora") else alpha


def lora_tensors(weights: dict[str, torch.Tensor], config: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(llama.cpp name, float32 array) of every lora_a and lora_b, from peft's saved names
    (`base_model.model.<module>.lora_A.weight`), B's rows permuted for q and k."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        for part in ("lora_A", "lora_B"):
            if f".{part}." in key:
                module = key.removeprefix("base_model.model.").split(f".{part}.")[0]
                pairs.setdefault(module, {})[part] = tensor
                break
        else:
            raise UserError(f"the adapter holds {key!r}, which is not a LoRA A or B matrix",
                            fix=f"use {MERGED}")
    for module, pair in sorted(pairs.items()):
        name = gguf_name(f"{module}.weight")
        if name is None or name == "token_embd.weight":  # llama.cpp reads an embedding's lora_a transposed
            raise UserError(f"LoRA on {module!r} has no place in a llama.cpp adapter of the llama architecture",
                            fix=f"target the attention and MLP projections (adapter.target_modules), or use {MERGED}")
        a = pair["lora_A"].detach().to(torch.float32).cpu().numpy()  # (r, in)
        b = pair["lora_B"].detach().to(torch.float32).cpu().numpy()  # (out, r)
        if name.endswith(".attn_q.weight"):
            b = permute_qk(b, config.num_attention_heads)
        elif name.endswith(".attn_k.weight"):
            b = permute_qk(b, config.num_key_value_heads)
        yield f"{name}.lora_a", a
        yield f"{name}.lora_b", b


def write_gguf_lora(adapter_dir: Path, base_config: Any, path: Path, type: str = "f16",
                    name: str | None = None) -> LoraGgufWritten:
    """Write the peft LoRA adapter in `adapter_dir` (for a base with `base_config`) to `path` as llama.cpp's
    adapter GGUF, complete or absent. `type`: f16 (default, as llama.cpp's converter) or f32."""
    import gguf
    from safetensors.torch import load_file

    if type not in TYPES:
        raise UserError(f"unknown adapter GGUF type {type!r}", fix=f"use one of {', '.join(TYPES)}")
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    check_adapter(adapter_config)
    check_architecture(base_config)
    tensors = list(lora_tensors(load_file(str(adapter_dir / "adapter_model.safetensors")), base_config))
    alpha = llama_cpp_alpha(adapter_config)
    with gguf_file(path) as writer:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(name or path.stem)
        for tensor_name, array in tensors:
            writer.add_tensor(tensor_name, array.astype(TYPES[type]))
    return LoraGgufWritten(path, type, alpha, int(adapter_config["r"]), len(tensors) // 2)
