"""`multitune merge`: fold a run's LoRA adapter into its base and save one plain transformers model.

The base is loaded unquantised in a 16- or 32-bit dtype, whatever the run trained on: a QLoRA base was 4-bit
during training, but 4-bit weights cannot hold the merged sum, so the merge goes into the 16-bit original
(the usual practice; the merged model then differs from the 4-bit training model by the quantisation error,
not by the adapter). Before anything is written, the merged model's logits on a few chat prompts are
compared with base + adapter in the same dtype; a difference beyond tolerance stops the merge.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from multitune.errors import UserError, hub_error
from multitune.models import adapters, load
from multitune.models.run_folder import open_run

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# Largest logit difference allowed, relative to the largest logit (at least 1): float32 only reorders sums;
# 16-bit merging rounds every merged weight once more (bf16 keeps 8 significant bits).
RELATIVE_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 2e-2}
CHECK_PROMPTS = [
    [{"role": "user", "content": "Hello! What can you do?"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Summarise in one sentence: the meeting moved from Monday to Thursday."}],
    [{"role": "user", "content": "Is this a claim? My car was hit while parked and I want to report it."}],
]


@dataclass(frozen=True)
class MergeResult:
    output_dir: Path
    dtype: torch.dtype
    max_abs_diff: float  # largest |merged - (base + adapter)| logit over the check prompts
    tolerance: float
    top1_agreement: float  # share of positions where both pick the same next token


def merge_run(run_dir: str | Path, output_dir: str | Path, dtype: str = "auto", device: str = "cpu") -> MergeResult:
    """Merge the adapter of the run in `run_dir` into its base and write the model (safetensors), tokenizer
    and generation config to `output_dir`, which is complete or absent. `dtype`: auto (the base's stored
    16-bit dtype, float32 for a float32 base; always 16-bit for QLoRA), float32, bfloat16/bf16,
    float16/fp16."""

    run_dir, output_dir = Path(run_dir), Path(output_dir)
    run = open_run(run_dir)
    cfg, adapter_dir, base_name = run.cfg, run.model_dir, run.base_name
    if base_name is None:
        raise UserError(f"{adapter_dir} holds a fully fine-tuned model (adapter.method: {cfg.adapter.method}), "
                        "not an adapter: there is nothing to merge",
                        fix=f"use {adapter_dir} as it is: it loads with AutoModelForCausalLM.from_pretrained")
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    refuse_virtual_tokens(adapter_config, "merged into its base")
    _refuse_existing(output_dir)
    torch_dtype = merge_dtype(cfg.adapter.method, dtype, _stored_dtype(base_name, cfg))
    tokenizer = load.load_tokenizer(str(adapter_dir), cfg.model)
    base = _load_base_unquantised(base_name, cfg, torch_dtype)
    model = adapters.load_adapter(base, adapter_dir).to(device).eval()
    prompts = [_prompt_tensor(tokenizer, p, device) for p in CHECK_PROMPTS]
    reference = _logits(model, prompts)
    merged = model.merge_and_unload()
    diff, agreement, tolerance = compare_logits(reference, _logits(merged, prompts), torch_dtype)
    if diff > tolerance:
        raise UserError(
            f"the merged model's logits differ from base + adapter by {diff:.3g} (tolerance {tolerance:.3g} "
            f"in {_name(torch_dtype)}); nothing was written",
            fix="merge in float32 (--dtype float32); if that fails too, the adapter does not fit this base",
        )
    _save_atomic(merged, tokenizer, output_dir)
    return MergeResult(output_dir, torch_dtype, diff, tolerance, agreement)


VIRTUAL_TOKEN_TYPES = {"PROMPT_TUNING": "prompt tuning", "PREFIX_TUNING": "prefix tuning"}


def refuse_virtual_tokens(adapter_config: dict[str, Any], what: str) -> None:
    """Refuse, naming the way out, an adapter of virtual tokens (prompt or prefix tuning): it adds inputs,
    not weights, so no merged model equals it and no weight-adapter format holds it."""
    kind = VIRTUAL_TOKEN_TYPES.get(adapter_config.get("peft_type", ""))
    if kind is not None:
        raise UserError(
            f"a {kind} adapter cannot be {what}: it trains {adapter_config.get('num_virtual_tokens')} virtual "
            "tokens put before every input, not weights, so no merged model computes what it computes",
            fix="serve it as an adapter (multitune serve RUN, or PeftModel.from_pretrained(base, RUN/adapter)); "
                "for a merged model or a GGUF, train with adapter.method=lora (or ia3, which merges)")


def merge_dtype(method: str, requested: str, stored: torch.dtype | None) -> torch.dtype:
    """The dtype the base is loaded and merged in. Never 4- or 8-bit: `qlora` merges into a 16-bit base."""
    name = ALIASES.get(requested, requested)
    if name != "auto":
        if name not in DTYPES:
            raise UserError(f"unknown dtype {requested!r}", fix="use auto, float32, bf16 or fp16")
        return DTYPES[name]
    if stored in (torch.bfloat16, torch.float16):
        return stored
    return torch.bfloat16 if method == "qlora" else torch.float32


def compare_logits(reference: list[torch.Tensor], merged: list[torch.Tensor], dtype: torch.dtype
                   ) -> tuple[float, float, float]:
    """(largest absolute difference, top-1 agreement, tolerance) between two lists of (T, V) logits."""
    diff = max(float((r.float() - m.float()).abs().max()) for r, m in zip(reference, merged, strict=True))
    same = sum(int((r.argmax(-1) == m.argmax(-1)).sum()) for r, m in zip(reference, merged, strict=True))
    positions = sum(r.shape[0] for r in reference)
    scale = max(1.0, max(float(r.float().abs().max()) for r in reference))
    return diff, same / positions, RELATIVE_TOLERANCE[dtype] * scale


def _stored_dtype(base_name: str, cfg: Any) -> torch.dtype | None:
    """The dtype the base's weights are stored in (its config says), or None when it does not say."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(base_name, revision=cfg.model.revision,
                                            trust_remote_code=cfg.model.trust_remote_code)
    except Exception as e:
        raise hub_error(e, "model", base_name) from None
    stored = getattr(config, "dtype", None)
    return getattr(torch, stored) if isinstance(stored, str) else stored


def _load_base_unquantised(base_name: str, cfg: Any, dtype: torch.dtype) -> Any:
    # The model section only: whatever quantization the run trained with is deliberately not applied.
    model = load.load_model(base_name, cfg.model.model_copy(update={"dtype": _name(dtype)}))
    if getattr(model.config, "quantization_config", None) is not None:
        raise UserError(f"the base {base_name!r} is stored quantised, so merged weights cannot be saved exactly",
                        fix="merge into the unquantised original of this base (set model.name to it)")
    return model


def _prompt_tensor(tokenizer: Any, messages: list[dict[str, str]], device: str) -> torch.Tensor:
    from multitune.data.tokenize import prompt_ids

    return torch.tensor([prompt_ids(tokenizer, messages)], device=device)


@torch.no_grad()
def _logits(model: Any, prompts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [model(input_ids=ids, use_cache=False).logits[0].float().cpu() for ids in prompts]  # (T, V) each


def _refuse_existing(output_dir: Path) -> None:
    if output_dir.exists() and any(output_dir.iterdir()):
        raise UserError(f"{output_dir} already exists and is not empty",
                        fix="choose a new --output folder, or delete that one first")


def _save_atomic(model: Any, tokenizer: Any, output_dir: Path) -> None:
    """Save into a temporary sibling folder and rename it into place: complete or absent."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}."))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
        model.save_pretrained(tmp)  # safetensors; the generation config goes with it
        tokenizer.save_pretrained(tmp)
        if output_dir.exists():
            output_dir.rmdir()  # empty, checked before merging
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
