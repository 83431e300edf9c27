"""One method's training steps, measured: multitune's own `train_step` (loop.py) on a model built the way
the `train` recipe builds it (models/load.py for the 4-bit base, models/adapters.py, train/optim.py,
accelerate's `prepare`), over the real token streams of gpu_data.py.

Reported per layout (packed rows, padded micro-batches): tokens/s of real (non-padding) tokens over the
timed steps (from one step's end to the next, batch making included), the first step's seconds (compilation, allocator warm-up), peak GPU memory
(`torch.cuda.max_memory_allocated`, weights included), every step's loss, the FLOPs per step and MFU
against the measured and the datasheet bf16 peak.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from gpu_data import SEED, Streams
from gpu_shapes import SKIP_CUDA, Shape, free_memory, random_model, step_flops

from multitune.config.schema import AdapterConfig, ModelConfig, QuantizationConfig, TrainConfig
from multitune.loss import answer_positions
from multitune.models import adapters, load
from multitune.train import loop, optim


@dataclass(frozen=True)
class Method:
    """What to measure: an `adapter.method`, the layers, and the switches a user sets."""

    method: str  # lora | qlora | dora | full
    layers: int
    gradient_checkpointing: bool = False
    compile_backend: str | None = None  # `train.compile: true` is inductor
    answer_logits_only: bool = True
    layouts: tuple[str, ...] = ("packed", "padded")


def cuda() -> bool:
    return torch.cuda.is_available()


def accelerator_for(compile_backend: str | None) -> Any:
    """An Accelerator as the `train` recipe makes one: bf16 autocast on a GPU, the dynamo plugin for
    `train.compile` (dynamic shapes: padded batches change length). accelerate keeps one shared state per
    process, reset here so every measurement starts from its own settings."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import TorchDynamoPlugin

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    plugin = TorchDynamoPlugin(backend=compile_backend, dynamic=True) if compile_backend else None
    return Accelerator(mixed_precision="bf16" if cuda() else "no", cpu=not cuda(), dynamo_plugin=plugin)


def build(shape: Shape, spec: Method, streams: Streams, accelerator: Any, folder: str | None) -> Any:
    """The base (4-bit from `folder` for qlora, else random weights on the device) with adapters attached."""
    if spec.method == "qlora":
        if folder is None:
            raise ValueError("qlora loads its 4-bit base from a model folder")
        base = load.load_model(folder, ModelConfig(name=folder, dtype=shape.dtype), QuantizationConfig(),
                               accelerator.device)
    else:
        base = random_model(shape, spec.layers, streams.tokenizer, accelerator.device)
    torch.manual_seed(SEED)
    lora = AdapterConfig(method=spec.method, r=shape.lora_r, alpha=shape.lora_alpha)
    return adapters.attach(base, lora, spec.gradient_checkpointing)


def train_config(shape: Shape, spec: Method, layout: str, total_steps: int) -> TrainConfig:
    micro = shape.packed_micro_batch if layout == "packed" else shape.padded_micro_batch
    return TrainConfig(max_steps=total_steps, learning_rate=shape.learning_rate, lr_scheduler="constant",
                       warmup_ratio=0.0, micro_batch_size=micro, mixed_precision="bf16" if cuda() else "no",
                       gradient_checkpointing=spec.gradient_checkpointing, compile=spec.compile_backend is not None,
                       answer_logits_only=spec.answer_logits_only)


def measure(shape: Shape, spec: Method, streams: Streams, peaks: dict[str, Any], folder: str | None = None) -> dict[str, Any]:
    """Build, prepare and time `spec` on each of its layouts; frees the GPU before returning."""
    started = time.perf_counter()
    accelerator = accelerator_for(spec.compile_backend)
    model = build(shape, spec, streams, accelerator, folder)
    trainable, total = adapters.count_parameters(model)
    steps = shape.warmup_steps + shape.timed_steps
    optimizer = optim.build_optimizer(model, train_config(shape, spec, "packed", steps))
    scheduler = optim.build_scheduler(optimizer, train_config(shape, spec, "packed", steps), steps * len(spec.layouts))
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    out: dict[str, Any] = {"method": spec.method, "layers": spec.layers, "trainable_params": trainable,
                           "total_params": total, "gradient_checkpointing": spec.gradient_checkpointing,
                           "compile": spec.compile_backend or False, "answer_logits_only": spec.answer_logits_only,
                           "build_s": round(time.perf_counter() - started, 2)}
    try:
        for layout in spec.layouts:
            out[layout] = run_layout(shape, spec, streams, layout, model, optimizer, scheduler, accelerator, peaks)
    finally:
        accelerator.free_memory()  # the Accelerator holds the prepared model and optimizer too
        del model, optimizer, scheduler
        free_memory()
    return out


def run_layout(shape: Shape, spec: Method, streams: Streams, layout: str, model: Any, optimizer: Any, scheduler: Any,
               accelerator: Any, peaks: dict[str, Any]) -> dict[str, Any]:
    """`warmup_steps` then `timed_steps` optimizer steps through loop.train_step; see the module docstring."""
    prepared = streams.layout(layout)
    steps = shape.warmup_steps + shape.timed_steps
    plan = loop.make_plan(train_config(shape, spec, layout, steps), prepared, SEED, 1)
    n_tasks = len(prepared.task_names)
    if cuda():
        torch.cuda.reset_peak_memory_stats()
    losses, seconds, tokens, flops = [], [], [], []
    synchronize()
    stamp = time.perf_counter()
    for step in range(steps):  # timed from one step's end to the next: batch making included, as in a run
        batches = loop.batches_for_step(prepared, plan, step, SEED, 0, streams.pad_id, accelerator.device)
        result = loop.train_step(model, optimizer, scheduler, accelerator, batches, 1.0, n_tasks,
                                 spec.answer_logits_only)
        synchronize()
        seconds.append(time.perf_counter() - stamp)
        losses.append(result.loss)
        tokens.append(result.tokens)
        flops.append(batch_flops(shape, spec, batches))  # bookkeeping (it reads the batches back): off the clock
        stamp = time.perf_counter()
    timed = slice(shape.warmup_steps, None)
    tokens_per_s = sum(tokens[timed]) / sum(seconds[timed])
    flop_rate = sum(f["total"] for f in flops[timed]) / sum(seconds[timed])
    return {
        "micro_batch_size": plan.micro_batch_size, "tokens_per_s": round(tokens_per_s, 1),
        "real_tokens_per_step": round(statistics.mean(tokens[timed]), 1),
        "step_s": round(statistics.median(seconds[timed]), 4), "first_step_s": round(seconds[0], 3),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda() else SKIP_CUDA,
        "losses": [round(x, 5) for x in losses],
        "tflop_per_step": {k: float(f"{statistics.mean(f[k] for f in flops[timed]) / 1e12:.4g}") for k in flops[0]},
        "tflops_per_s": round(flop_rate / 1e12, 2), **mfu(flop_rate, peaks),
    }


def batch_flops(shape: Shape, spec: Method, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Model FLOPs of one step's micro-batches (gpu_shapes.step_flops), counted from the real tokens."""
    total: dict[str, float] = {}
    for b in batches:
        lengths = sequence_lengths(b)
        positions = int(answer_positions(b["labels"]).sum()) if spec.answer_logits_only else sum(lengths)
        part = step_flops(shape, spec.layers, spec.method, sum(lengths), positions, lengths)
        total = {k: total.get(k, 0.0) + v for k, v in part.items()}
    return total


def sequence_lengths(batch: dict[str, torch.Tensor]) -> list[int]:
    """The lengths of the sequences in a batch: padded rows by their attention mask, packed rows split
    where their position ids restart at 0 (padding, task id -1, left out)."""
    if "attention_mask" in batch:
        return [int(n) for n in batch["attention_mask"].sum(dim=1)]
    out = []
    for positions, tasks in zip(batch["position_ids"].cpu(), batch["task_ids"].cpu(), strict=True):
        starts = (positions == 0).nonzero().squeeze(1).tolist() + [len(positions)]
        out += [int((tasks[a:b] >= 0).sum()) for a, b in zip(starts, starts[1:], strict=False)]
    return [n for n in out if n]


def mfu(flop_rate: float, peaks: dict[str, Any]) -> dict[str, Any]:
    """Model FLOP/s over each peak: "skipped: no CUDA" on a CPU, a reason where a peak is unknown."""
    if not cuda():
        return {"mfu_measured_peak": SKIP_CUDA, "mfu_datasheet_peak": SKIP_CUDA}
    measured, datasheet = peaks.get("measured_tflops"), peaks.get("datasheet_tflops")
    return {
        "mfu_measured_peak": round(flop_rate / (measured * 1e12), 4) if isinstance(measured, float) else
        "peak not measured (environment section skipped)",
        "mfu_datasheet_peak": round(flop_rate / (datasheet * 1e12), 4) if datasheet else "unknown GPU: no datasheet peak",
    }


def synchronize() -> None:
    if cuda():
        torch.cuda.synchronize()
