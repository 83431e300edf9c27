"""The shapes bench/gpu/check.py measures, the random-weight models built from them, the FLOP count per
token, and the machine it runs on (versions, GPU, a measured bf16 matmul peak).

FLOPs (model FLOPs, what MFU counts; recomputation under gradient checkpointing is not counted):
- a linear layer of P weights costs 2P per token forward; backward costs 2P for the gradient of its input
  and 2P more for its weights' gradient only when they train: a frozen base ~4P per token, a trained one 6P;
- the output head (hidden x vocabulary) counts only at the positions whose logits are computed (the answer
  positions with `train.answer_logits_only`), 4 or 6 times its size like any linear layer;
- attention scores and their weighted sum: per layer and per sequence of n tokens, causal, 2·n²·hidden
  forward (QK^T and AV, half the square), x3 with the backward: 6·n²·hidden, counted within each sequence
  (packed rows hold several, kept apart by position ids; padding is not counted);
- LoRA's own matrices: 6 per weight per token (they train); norms, RoPE, activations and the embedding
  lookup are left out (under 1%).
"""

from __future__ import annotations

import importlib.metadata
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

SKIP_CUDA = "skipped: no CUDA"
# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, no sparsity), by the name torch reports.
DATASHEET_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 NVL": 835.0,
                         "H100 PCIe": 756.0, "A100": 312.0, "L40S": 362.1, "A10G": 70.0, "L4": 121.0}


@dataclass(frozen=True)
class Shape:
    """A Llama shape and the geometry each part of the check runs at."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    layers: int  # lora, qlora, dora, lora + checkpointing, share_prefix, eval, TRL
    full_layers: tuple[int, ...]  # full fine-tuning: tried in order until every weight and its AdamW state fit
    small_layers: int  # torch.compile, the logits comparison and the launched runs: time, not memory
    rope_theta: float = 500_000.0
    pack_len: int = 2048
    packed_micro_batch: int = 2  # packed rows of pack_len per step
    padded_micro_batch: int = 16  # examples per step, padded to the longest
    warmup_steps: int = 2
    timed_steps: int = 5
    learning_rate: float = 2e-4
    rows_per_task: int = 2500
    tokenizer_vocab: int = 8192  # the BPE trained on the rows; its ids are spread over `vocab`
    dtype: str = "bfloat16"  # the saved model folders' and the peer's weights (the timed sections resolve theirs)
    eval_rows: int = 128  # validation rows per task the eval section scores (`eval.max_rows`)
    eval_generate_rows: int = 32  # of those, the rows it also generates for (`eval.generate_max_rows`)
    lora_r: int = 16
    lora_alpha: float = 32.0


# Full fine-tuning keeps float32 master weights (the shipped `model.dtype: auto`): with their gradients and
# AdamW's states, 120 GiB at 32 layers (no GPU here), 68 GiB at 16 (an H200), 42 GiB at 8 (an H100).
LLAMA3_8B = Shape(hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=128_256, layers=32,
                  full_layers=(32, 16, 8), small_layers=4)
# The CPU smoke: the same code at a toy size. Every projection is a multiple of 128, as bitsandbytes'
# CPU 4-bit kernel needs ("N must be divisible by block_n").
SMOKE = Shape(hidden=256, intermediate=512, heads=4, kv_heads=2, vocab=4096, layers=2, full_layers=(1,),
              small_layers=1, pack_len=256, packed_micro_batch=2, padded_micro_batch=8, warmup_steps=1,
              timed_steps=2, learning_rate=2e-3, rows_per_task=120, tokenizer_vocab=1024, dtype="float32",
              lora_r=8, lora_alpha=16.0, eval_rows=8, eval_generate_rows=2)


def llama_config(shape: Shape, layers: int, tokenizer: Any) -> Any:
    """The `LlamaConfig` of `shape` with `layers` decoder layers and the tokenizer's special ids."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=max(8192, shape.pack_len),
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )


def random_model(shape: Shape, layers: int, tokenizer: Any, device: torch.device, seed: int = 0,
                 dtype: str | None = None, attn_implementation: str = "sdpa") -> Any:
    """A `LlamaForCausalLM` of `shape` with random weights in `dtype` (default `shape.dtype`), built
    directly on `device` (no download, and no 16 GB detour through the CPU for the 8B shape)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):  # initialised where it runs, in its own dtype: no float32 copy of 8B weights
        return AutoModelForCausalLM.from_config(llama_config(shape, layers, tokenizer),
                                                dtype=getattr(torch, dtype or shape.dtype),
                                                attn_implementation=attn_implementation)


def save_model_folder(shape: Shape, layers: int, tokenizer: Any, folder: Any, device: torch.device) -> dict[str, Any]:
    """Write a random model of `shape` with its tokenizer as a Hugging Face folder (what `multitune train`,
    QLoRA's quantising load and a peer load). Returns its size and the seconds it took."""
    started = time.perf_counter()
    model = random_model(shape, layers, tokenizer, device)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    free_memory()
    return {"folder": str(folder), "layers": layers, "params": params, "save_s": round(time.perf_counter() - started, 2)}


def free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def full_state_gib(shape: Shape, layers: int, weight_bytes: int) -> float:
    """GiB that full fine-tuning holds before any activation: every weight (embedding and head
    included), its gradient in the same dtype, and AdamW's two states (the weights' dtype too).

    >>> round(full_state_gib(LLAMA3_8B, 32, 4), 1), round(full_state_gib(LLAMA3_8B, 8, 4), 1)
    (119.7, 41.7)
    """
    params = linear_params(shape, layers) + 2 * shape.vocab * shape.hidden
    return params * 4 * weight_bytes / 2**30


def linear_params(shape: Shape, layers: int) -> int:
    """Weights of the decoder layers' linear projections (q, k, v, o, gate, up, down)."""
    head_dim = shape.hidden // shape.heads
    kv = shape.kv_heads * head_dim
    attention = shape.hidden * shape.hidden * 2 + shape.hidden * kv * 2
    mlp = 3 * shape.hidden * shape.intermediate
    return layers * (attention + mlp)


def lora_params(shape: Shape, layers: int, r: int) -> int:
    """LoRA weights on every linear projection: r x (in + out) each."""
    head_dim = shape.hidden // shape.heads
    kv = shape.kv_heads * head_dim
    h, i = shape.hidden, shape.intermediate
    per_layer = (h + h) + (h + kv) * 2 + (h + h) + (h + i) * 2 + (i + h)
    return layers * r * per_layer


def step_flops(shape: Shape, layers: int, method: str, tokens: int, logit_positions: int,
               sequence_lengths: list[int]) -> dict[str, float]:
    """Model FLOPs of one optimizer step (module docstring): the parts and their total."""
    trained = method == "full"
    per_weight = 6 if trained else 4
    body = per_weight * linear_params(shape, layers) * tokens
    head = per_weight * shape.hidden * shape.vocab * logit_positions
    attention = 6 * shape.hidden * layers * sum(n * n for n in sequence_lengths)
    adapters = 0 if trained else 6 * lora_params(shape, layers, shape.lora_r) * tokens
    return {"linear": float(body), "head": float(head), "attention": float(attention), "lora": float(adapters),
            "total": float(body + head + attention + adapters)}


def versions() -> dict[str, str]:
    out = {}
    for name in ["torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl", "datasets", "pydantic",
                 "liger-kernel", "flash-attn", "safetensors", "tokenizers", "pyarrow"]:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["torch CUDA"] = torch.version.cuda or "none (CPU build)"
    return out


def environment() -> dict[str, Any]:
    """`multitune doctor`'s report, the versions that matter here and the GPU."""
    from multitune.recipes import doctor

    gpu: Any = SKIP_CUDA
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
               "compute_capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count}
    return {"doctor": doctor.versions() + doctor.devices(), "versions": versions(), "gpu": gpu}


def datasheet_peak(gpu_name: str) -> float | None:
    """The datasheet dense bf16 peak for a GPU name torch reports, or None when unknown."""
    for key, tflops in DATASHEET_BF16_TFLOPS.items():
        if all(part in gpu_name for part in key.split()):
            return tflops
    return None


def matmul_peak(n: int = 8192, repeats: int = 10) -> dict[str, Any]:
    """Measured bf16 matmul rate: the mean of `repeats` n x n x n products after 3 warm-ups (random data)."""
    if not torch.cuda.is_available():
        return {"measured_tflops": SKIP_CUDA, "datasheet_tflops": None}
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / repeats
    del a, b
    free_memory()
    name = torch.cuda.get_device_properties(0).name
    return {"measured_tflops": round(2 * n**3 / seconds / 1e12, 1), "datasheet_tflops": datasheet_peak(name),
            "how": f"{n}x{n}x{n} bf16 torch.matmul, mean of {repeats} after 3 warm-ups, random data"}


def describe(shape: Shape) -> dict[str, Any]:
    return {**asdict(shape), "params_all_layers": linear_params(shape, shape.layers) + 2 * shape.vocab * shape.hidden}


__all__ = ["LLAMA3_8B", "SKIP_CUDA", "SMOKE", "Shape", "describe", "environment", "matmul_peak", "random_model",
           "replace", "save_model_folder", "step_flops"]
