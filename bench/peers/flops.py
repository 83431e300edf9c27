"""Model FLOPs per real token and the CPU's matmul peak, for bench/peers/compare.py's MFU columns.

Model FLOPs (what a LoRA step needs, whichever tool runs it; recomputation and wasted work not counted),
per sequence of n real tokens of which a carry the loss (answer / completion tokens):

- the base's matmul weights (q, k, v, o, gate, up, down in every layer; N of them) are frozen: 2N per token
  forward and 2N backward for the gradient of their input, no weight gradient: 4N per token;
- LoRA's own matrices (r x (in + out) per adapted layer; N_lora of them) train: 6 N_lora per token;
- the output head (hidden x vocabulary, tied or not) is needed only where the loss is: 4 x hidden x vocab
  per answer token (frozen, like the base);
- attention (no weights): per layer and token, scores Q.K^T and the weighted sum A.V cost 2 x n x width each
  forward (width = heads x head_dim; the full square, not halved for causality, as PaLM's appendix B
  counts it), and the backward twice that: 3 x 2 x 2 x layers x n x width = 12 x layers x n x width per
  token, so 12 x layers x n^2 x width per sequence (packed rows counted per sequence they hold);
- norms, RoPE, activations, the softmax and the embedding lookup are left out (about 1%).

MFU = real tokens/s x model FLOPs per real token / peak FLOP/s, against the machine's fp32 and bf16
peaks measured by `matmul_peak` (n x n x n torch.matmul, best of a few, this process's threads).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

FORMULA = ("model FLOPs per real token = 4 N (frozen base matmuls) + 6 N_lora (adapters) "
           "+ 4 hidden vocab x answer share (head at loss positions) + 12 layers width n (attention, n the "
           "sequence's real length, averaged over tokens)")


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs of a Llama-style decoder."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    vocab: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ModelShape:
        """From a Hugging Face `config.json` (LlamaConfig's field names; `head_dim` defaults to
        hidden / heads as transformers does)."""
        heads = cfg["num_attention_heads"]
        return cls(hidden=cfg["hidden_size"], intermediate=cfg["intermediate_size"], heads=heads,
                   kv_heads=cfg.get("num_key_value_heads") or heads,
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
                   layers=cfg["num_hidden_layers"], vocab=cfg["vocab_size"])


def _projections(s: ModelShape) -> list[tuple[int, int]]:
    """(in, out) of each linear layer of one decoder layer: q, k, v, o, gate, up, down."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    return [(s.hidden, q), (s.hidden, kv), (s.hidden, kv), (q, s.hidden),
            (s.hidden, s.intermediate), (s.hidden, s.intermediate), (s.intermediate, s.hidden)]


def base_matmul_params(s: ModelShape) -> int:
    """N: the decoder layers' matmul weights (the head is counted apart, at the loss positions)."""
    return s.layers * sum(i * o for i, o in _projections(s))


def lora_params(s: ModelShape, r: int) -> int:
    """N_lora: LoRA on every linear layer of the decoder ("all-linear", the head excepted): r x (in + out)."""
    return s.layers * sum(r * (i + o) for i, o in _projections(s))


def sequence_flops(s: ModelShape, r: int, length: int, answer_tokens: int) -> dict[str, int]:
    """Model FLOPs of one training sequence (forward and backward; module docstring), by part."""
    width = s.heads * s.head_dim
    parts = {"base": 4 * base_matmul_params(s) * length, "lora": 6 * lora_params(s, r) * length,
             "head": 4 * s.hidden * s.vocab * answer_tokens, "attention": 12 * s.layers * width * length * length}
    return {**parts, "total": sum(parts.values())}


def flops_per_real_token(s: ModelShape, r: int, sequences: Iterable[tuple[int, int]]) -> dict[str, float]:
    """Model FLOPs per real token over `sequences` of (real tokens, answer tokens), by part."""
    sums: dict[str, int] = {}
    tokens = 0
    for length, answers in sequences:
        tokens += length
        for k, v in sequence_flops(s, r, length, answers).items():
            sums[k] = sums.get(k, 0) + v
    if tokens == 0:
        raise ValueError("no tokens to count FLOPs over")
    return {k: v / tokens for k, v in sums.items()}


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops_per_s: float) -> float:
    """The share of the peak that `tokens_per_s` real tokens at `flops_per_token` reach."""
    return tokens_per_s * flops_per_token / peak_flops_per_s


def matmul_peak(n: int = 2048, dtype: str = "float32", repeats: int = 5, warmup: int = 2,
                budget_s: float = 20.0) -> dict[str, Any]:
    """The machine's matmul rate in FLOP/s: n x n x n torch.matmul in `dtype` on the CPU with this process's
    threads, the best of `repeats` after `warmup` (a peak: the least disturbed run).

    A CPU without bf16 units runs bf16 matmuls on a slow path (0.7 GFLOP/s measured on an AVX2-only EPYC:
    half a minute for one 2048^3 product), so n is halved (down to 256) while one product would take more
    than `budget_s` / (warmup + repeats); the size used is reported.
    """
    import torch

    while True:
        a = torch.randn(n, n, dtype=getattr(torch, dtype))
        b = torch.randn(n, n, dtype=getattr(torch, dtype))
        started = time.perf_counter()
        a @ b  # the first warm-up, timed to size the rest
        if n <= 256 or time.perf_counter() - started <= budget_s / (warmup + repeats):
            break
        n //= 2
    for _ in range(warmup - 1):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return {"flops_per_s": 2 * n**3 / best, "gflops_per_s": round(2 * n**3 / best / 1e9, 1), "dtype": dtype,
            "n": n, "how": f"{n}x{n}x{n} torch.matmul, best of {repeats} after {warmup} warm-ups, "
                           f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}"}
