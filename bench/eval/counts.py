"""What `bench/eval/smollm2.py` counts and the limits it measures evaluation against.

- `count_forwards`: a forward pre-hook on the model's decoder and one on its output head count every
  forward call, the positions it runs through the linear layers (padding included, told apart where an
  attention mask says so) and the positions the head runs on. Hooks, not counters in the code measured,
  so the same numbers come from any source tree (`--before`).
- the machine: the fp32 (or bf16) matmul peak (a 2048^3 `torch.mm`, best of a few, with the threads
  evaluation uses) and the memory read bandwidth (the sum of a tensor far larger than the caches);
- the limits: the FLOPs that the needed positions cost (`needed_flops`) over the peak, and the time to
  read the weights once per forward call (`weight_read_seconds`); `roofline_seconds` takes the larger of
  the two for every call.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class Calls:
    """Forward calls seen by `count_forwards`, one entry per call."""

    positions: list[int] = field(default_factory=list)  # tokens through the linear layers, padding included
    padding: list[int] = field(default_factory=list)  # of which the attention mask marks as padding
    logits: list[int] = field(default_factory=list)  # positions the output head ran on

    @property
    def forwards(self) -> int:
        return len(self.positions)


def decoder_and_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The module holding the embeddings and the layers (LlamaModel under any peft wrapper) and the head."""
    body = next(m for m in model.modules() if hasattr(m, "embed_tokens") and hasattr(m, "layers"))
    return body, model.get_output_embeddings()


@contextlib.contextmanager
def count_forwards(model: Any) -> Iterator[Calls]:
    """While inside, every forward of `model` adds an entry to the `Calls` yielded."""
    calls = Calls()
    body, head = decoder_and_head(model)

    def on_body(_module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        shape = ids.shape if ids is not None else kwargs["inputs_embeds"].shape[:2]  # (B, T)
        mask = kwargs.get("attention_mask")
        calls.positions.append(shape[0] * shape[1])
        # A 2-D mask (B, past + T) covers the new tokens in its last T columns; a 4-D one is packed.
        calls.padding.append(int((mask[:, -shape[1]:] == 0).sum()) if mask is not None and mask.dim() == 2 else 0)
        calls.logits.append(0)

    def on_head(_module: Any, args: tuple) -> None:
        calls.logits[-1] += args[0].shape[:-1].numel()

    handles = [body.register_forward_pre_hook(on_body, with_kwargs=True), head.register_forward_pre_hook(on_head)]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


@dataclass(frozen=True)
class Params:
    """A model's parameters as the limits count them (adapters excluded: a LoRA adds ~1% and is merged in
    the limit's ideal)."""

    total: int  # N: every parameter once (a tied head is the embedding table)
    body: int  # multiplied at every position: total less the embedding table and the head
    head: int  # multiplied at the positions whose logits are needed
    weight_bytes: int  # what a forward reads: every parameter but an untied embedding table (looked up)


def params(model: Any) -> Params:
    body, head = decoder_and_head(model)
    embed, out = body.embed_tokens.weight, head.weight
    base = [(n, p) for n, p in model.named_parameters(remove_duplicate=True) if "lora_" not in n]
    total = sum(p.numel() for _, p in base)
    tied = embed.data_ptr() == out.data_ptr()
    table = embed.numel() * embed.element_size()
    weight_bytes = sum(p.numel() * p.element_size() for _, p in base) - (0 if tied else table)
    return Params(total, total - embed.numel() - (0 if tied else out.numel()), out.numel(), weight_bytes)


def needed_flops(positions: int, logits: int, p: Params) -> float:
    """2 FLOPs per weight per position: every needed position through the body, the head where logits
    are needed.

    >>> needed_flops(10, 2, Params(total=135, body=100, head=35, weight_bytes=540))
    2140.0
    """
    return 2.0 * (positions * p.body + logits * p.head)


def flop_fraction(flops: float, peak_gflops: float, seconds: float) -> float:
    """The share of the FLOP limit reached: the seconds the needed FLOPs take at the peak over the measured.

    >>> flop_fraction(4e9, 100.0, 0.5)
    0.08
    """
    return flops / (peak_gflops * 1e9) / seconds


def weight_read_seconds(forwards: int, weight_bytes: int, bandwidth_gbs: float) -> float:
    """Reading every weight once per forward call: what batched decoding cannot beat.

    >>> weight_read_seconds(64, 540_000_000, 20.0)
    1.728
    """
    return forwards * weight_bytes / (bandwidth_gbs * 1e9)


def roofline_seconds(calls: Calls, p: Params, peak_gflops: float, bandwidth_gbs: float) -> float:
    """Per forward call, the larger of reading the weights and computing its positions at the peak.

    >>> c = Calls(positions=[1000, 4], padding=[0, 0], logits=[1, 4])
    >>> round(roofline_seconds(c, Params(135, 100, 35, 540), 1e-4, 1e-6), 3)  # FLOPs 2.0007 s then 0.0108 s; reads 0.54 s each
    2.541
    """
    return sum(max(p.weight_bytes / (bandwidth_gbs * 1e9), needed_flops(n, k, p) / (peak_gflops * 1e9))
               for n, k in zip(calls.positions, calls.logits, strict=True))


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """The best of `repeats` n x n x n `torch.mm` in `dtype`, with torch's current threads, in GFLOP/s."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm up (thread pool, packing buffers)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def read_bandwidth_gbs(mib: int = 512, repeats: int = 5) -> float:
    """The best of `repeats` sums of a `mib` MiB float32 tensor (far past the caches), in GB/s read."""
    x = torch.ones(mib * 2**20 // 4)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best / 1e9


def cpu_flags(wanted: tuple[str, ...] = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f")) -> dict[str, bool]:
    """Which of `wanted` this CPU advertises (Linux's /proc/cpuinfo; all False elsewhere)."""
    info = Path("/proc/cpuinfo")
    flags: set[str] = set()
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {f: f in flags for f in wanted}


def op_shares(prof: Any, wall_seconds: float, top: int = 15) -> dict[str, Any]:
    """From a torch.profiler run: the top ops by self CPU time, the matmul ops' share of the wall time,
    and the host share (the wall time outside every op: Python, scheduling, the pool's bookkeeping)."""
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    in_ops = sum(e.self_cpu_time_total for e in rows) / 1e6
    share = {e.key: e.self_cpu_time_total / 1e6 / wall_seconds for e in rows}
    return {
        "wall_s": wall_seconds, "in_ops_s": in_ops, "host_share": max(0.0, 1 - in_ops / wall_seconds),
        "mm_share": share.get("aten::mm", 0.0),
        "matmul_share": sum(share.get(k, 0.0) for k in ("aten::mm", "aten::addmm", "aten::linear", "aten::bmm",
                                                          "aten::matmul")),
        "top": [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "share": share[e.key], "calls": e.count}
                for e in rows[:top]],
    }
