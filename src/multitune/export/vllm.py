"""`multitune export RUN --format vllm --output DIR`: the run's LoRA adapter as vLLM's multi-LoRA serving
loads it (`vllm serve BASE --enable-lora --lora-modules NAME=DIR`), or a refusal that says why it cannot
and what to do instead.

vLLM reads a peft adapter folder: `adapter_config.json` (through its `PEFTHelper`: `r`, `lora_alpha`,
`target_modules`, `use_rslora`, `bias`, `modules_to_save`, `use_dora`) and `adapter_model.safetensors`,
whose keys `base_model.model.<module>.lora_A.weight` / `.lora_B.weight` must name modules the model serves
LoRA on; tokenizer files in the folder are used for requests to that adapter. It refuses `modules_to_save`,
DoRA, biases without `--enable-lora-bias`, and a rank above `--max-lora-rank` (16 by default; it takes 8,
16, 32, 64, 128, 256, 320 or 512). The export checks all of that here, so a folder it writes is one vLLM
loads, and writes exactly those files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multitune.errors import UserError
from multitune.export.merge import refuse_virtual_tokens

MAX_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM's `--max-lora-rank` takes; 16 is its default."""
DEFAULT_MAX_LORA_RANK = 16
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The Llama modules vLLM serves LoRA on (it packs q/k/v and gate/up itself)."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
MERGED = "multitune merge RUN --output DIR and `vllm serve DIR` (the merged model holds every trained weight)"


@dataclass(frozen=True)
class VllmExport:
    output_dir: Path
    rank: int
    max_lora_rank: int  # the smallest --max-lora-rank vLLM takes that serves this rank
    command: str  # the vllm serve command line for it


def problems(adapter_config: dict[str, Any], weight_names: list[str]) -> list[str]:
    """What vLLM's LoRA loader would refuse in this peft adapter (empty when it loads)."""
    out = []
    if adapter_config.get("peft_type") != "LORA":
        out.append(f"it is a {adapter_config.get('peft_type')} adapter; vLLM serves LoRA adapters only")
        return out
    if adapter_config.get("modules_to_save"):
        out.append(f"it trains {', '.join(adapter_config['modules_to_save'])} in full (modules_to_save), which vLLM "
                   "refuses (\"vLLM only supports modules_to_save being None\")")
    if adapter_config.get("use_dora"):
        out.append("it is DoRA, which vLLM does not serve")
    if adapter_config.get("bias", "none") != "none":
        out.append(f"it trains biases (bias: {adapter_config['bias']}), which needs vLLM's --enable-lora-bias")
    if int(adapter_config["r"]) > MAX_LORA_RANKS[-1]:
        out.append(f"its rank {adapter_config['r']} is above the largest --max-lora-rank vLLM takes "
                   f"({MAX_LORA_RANKS[-1]})")
    modules = sorted({n.removeprefix("base_model.model.").split(".lora_")[0].rsplit(".", 1)[-1] for n in weight_names
                      if ".lora_A." in n or ".lora_B." in n})
    others = [m for m in modules if m not in LORA_MODULES]
    if others:
        out.append(f"it has LoRA on {', '.join(others)}, where vLLM serves none for Llama models")
    stray = [n for n in weight_names if ".lora_A." not in n and ".lora_B." not in n]
    if stray:
        out.append(f"it holds tensors that are no LoRA matrix ({stray[0]}, ...)")
    return out


def max_lora_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` value vLLM takes that serves `rank`.

    >>> max_lora_rank(8), max_lora_rank(16), max_lora_rank(17), max_lora_rank(300)
    (8, 16, 32, 320)
    """
    return next(m for m in MAX_LORA_RANKS if m >= rank)


def serve_command(base: str, name: str, folder: Path, rank: int) -> str:
    """The `vllm serve` line that serves the adapter beside its base."""
    flag = f" --max-lora-rank {max_lora_rank(rank)}" if rank > DEFAULT_MAX_LORA_RANK else ""
    return f"vllm serve {base} --enable-lora --lora-modules {name}={folder}{flag}"


def export_vllm(run_dir: str | Path, output_dir: str | Path, base: str | None = None) -> VllmExport:
    """Write the run's adapter to `output_dir` (new or empty) as vLLM loads it, after checking that vLLM can
    serve it (a `UserError` with the reason and the fix otherwise). `base`: the model vLLM serves it on,
    for the command shown (default: the base the run trained)."""
    from safetensors.torch import load_file, save_file

    from multitune.models.run_folder import open_run

    run_dir, output_dir = Path(run_dir), Path(output_dir)
    run = open_run(run_dir)  # every file checked before anything is read or written
    cfg, adapter_dir = run.cfg, run.model_dir
    if not run.is_adapter:
        raise UserError(f"{run_dir} holds a fully fine-tuned model, not an adapter",
                        fix=f"serve it as a model: vllm serve {adapter_dir}")
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    refuse_virtual_tokens(adapter_config, "served by vLLM")
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    found = problems(adapter_config, sorted(weights))
    if found:
        raise UserError("vLLM cannot serve this run's adapter: " + "; ".join(found),
                        fix=f"train with adapter.method=lora, no modules_to_save, r <= 512; or use {MERGED}")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise UserError(f"{output_dir} already exists and is not empty", fix="choose a new --output folder")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}."))
    try:
        save_file(weights, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
        for name in TOKENIZER_FILES:  # requests to the adapter use its tokenizer (the run's chat template)
            if (adapter_dir / name).is_file():
                shutil.copyfile(adapter_dir / name, tmp / name)
        os.chmod(tmp, 0o755)
        if output_dir.exists():
            output_dir.rmdir()
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    rank = int(adapter_config["r"])
    served_on = base or (cfg.model.name if not cfg.model.is_gguf else adapter_config["base_model_name_or_path"])
    return VllmExport(output_dir, rank, max_lora_rank(rank),
                      serve_command(served_on, run_dir.resolve().name, output_dir.resolve(), rank))
