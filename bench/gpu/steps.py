"""One method's training steps, measured: multitune's own `train_step` (loop.py) on a model built the way
the `train` recipe builds it (models/load.py for the 4-bit base, models/adapters.py, train/optim.py,
accelerate's `prepare`), over the real token streams of bench/gpu/data.py.

What a user gets: each measurement is a run config written as a user would write it (the method, the
tasks, the few settings the check sets, listed as `overrides`), resolved for this machine by
`models.load.for_this_machine` (config/device.py) exactly as `multitune train` resolves it. Precision,
weight dtype, batch layout, TF32 and the adapters' input cast are the shipped defaults for the device,
and the result says which they were (`settings`).

Layouts: `default` (the layout the defaults give this device: padded rows on a GPU, shared-prefix rows
on a CPU), `packed` (`data.packing: true`), and `padded` / `shared_prefix` (`train.share_prefix` false /
true) where a section compares them. Reported per layout, under its resolved name: tokens/s of real
(non-padding) tokens over the timed steps (from one step's end to the next, batch making included), the
first step's seconds (compilation, allocator warm-up), peak GPU memory (`torch.cuda.max_memory_allocated`,
weights included), every step's loss, the positions the model ran per step (padding and shared prefixes
show there), the FLOPs per step and MFU against the measured and the datasheet bf16 peak.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from bench.gpu.data import SEED, Streams
from bench.gpu.shapes import SKIP_CUDA, Shape, free_memory, random_model, step_flops
from multitune.config import RunConfig, device, validate
from multitune.loss import answer_positions
from multitune.models import adapters, attention, load
from multitune.runtime import tf32_matmuls
from multitune.train import loop, optim

# What a layout adds to the user's config; `default` adds nothing.
LAYOUTS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {}, "packed": {"data": {"packing": True}},
    "padded": {"train": {"share_prefix": False}}, "shared_prefix": {"train": {"share_prefix": True}},
}


@dataclass(frozen=True)
class Method:
    """What to measure: an `adapter.method`, the layers, and the switches a user sets."""

    method: str  # lora | qlora | dora | full
    layers: int
    gradient_checkpointing: bool = False
    compile_backend: str | None = None  # `train.compile: true` is inductor
    answer_logits_only: bool = True
    layouts: tuple[str, ...] = ("packed", "default")  # keys of LAYOUTS


def cuda() -> bool:
    return torch.cuda.is_available()


def user_config(shape: Shape, spec: Method, tasks: list[dict[str, Any]], layout: str, steps: int,
                model_name: str) -> dict[str, Any]:
    """The YAML a user would write for this measurement: the shipped defaults, but for the geometry and
    the switches the check sets (a constant learning rate, so every step trains alike)."""
    micro = shape.packed_micro_batch if layout == "packed" else shape.padded_micro_batch
    train: dict[str, Any] = {"max_steps": steps, "learning_rate": shape.learning_rate, "lr_scheduler": "constant",
                             "warmup_ratio": 0.0, "micro_batch_size": micro}
    for key, value, default in [("gradient_checkpointing", spec.gradient_checkpointing, False),
                                ("compile", spec.compile_backend is not None, False),
                                ("answer_logits_only", spec.answer_logits_only, True)]:
        if value != default:
            train[key] = value
    extra = LAYOUTS[layout]
    return {"model": {"name": model_name}, "seed": SEED, "tasks": tasks,
            "adapter": {"method": spec.method, "r": shape.lora_r, "alpha": shape.lora_alpha},
            "data": {"max_seq_len": shape.pack_len, **extra.get("data", {})}, "train": {**train, **extra.get("train", {})}}


def resolved_config(shape: Shape, spec: Method, tasks: list[dict[str, Any]], layout: str, steps: int,
                    model_name: str | None = None) -> tuple[RunConfig, dict[str, Any]]:
    """`user_config` validated and resolved for this machine as `multitune train` does, and the overrides
    it holds (everything but the tasks and the model's name)."""
    user = user_config(shape, spec, tasks, layout, steps, model_name or f"random {spec.layers}-layer model")
    overrides = {k: v for k, v in user.items() if k not in ("tasks", "model", "seed")}
    return load.for_this_machine(validate(user, origin="bench/gpu/steps.py")), overrides


def layout_name(cfg: RunConfig) -> str:
    return "packed" if cfg.data.packing else ("shared_prefix" if cfg.shares_prefix else "padded")


def settings(cfg: RunConfig) -> dict[str, Any]:
    """The device-dependent settings a resolved config trains with, and the line a run starts with."""
    autocast = cfg.train.mixed_precision != "no"
    cast = "none: no adapters" if cfg.adapter.method == "full" else (
        "off: autocast decides" if autocast else "to the adapters' float32 (peft)")
    out = {"mixed_precision": cfg.train.mixed_precision, "dtype": cfg.model.dtype, "adapter_input_cast": cast,
           "dropout": cfg.adapter.dropout, "attn_implementation": cfg.model.attn_implementation, "tf32": cuda(),
           "run_prints": device.describe(cfg)}
    if cfg.adapter.method == "qlora":
        q = cfg.quantization
        out["quantization"] = f"{q.quant_type}, double {q.double_quant}, compute {q.compute_dtype}, storage {q.storage_dtype}"
    return out


def device_defaults(shape: Shape, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """What `auto` and `null` resolve to on this machine for each method (config/device.py), as
    `multitune train` resolves them: the settings the timed sections train with."""
    out: dict[str, Any] = {"device": "cuda" if cuda() else "cpu", "bf16": cuda() and torch.cuda.is_bf16_supported()}
    for method in ("lora", "qlora", "dora", "full"):
        cfg, _ = resolved_config(shape, Method(method, shape.layers), tasks, "default", 1)
        out[method] = {"layout": layout_name(cfg), **settings(cfg)}
    return out


def accelerator_for(cfg: RunConfig, compile_backend: str | None) -> Any:
    """An Accelerator as the `train` recipe makes one: the config's mixed precision, TF32 matmuls on a
    GPU, the dynamo plugin for `train.compile` (dynamic shapes: padded batches change length). accelerate
    keeps one shared state per process, reset here so every measurement starts from its own settings."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import TorchDynamoPlugin

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    tf32_matmuls(cuda())
    plugin = TorchDynamoPlugin(backend=compile_backend, dynamic=True) if cfg.train.compile else None
    return Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=not cuda(), dynamo_plugin=plugin)


def build(shape: Shape, spec: Method, cfg: RunConfig, streams: Streams, accelerator: Any, folder: str | None) -> Any:
    """The base (4-bit from `folder` for qlora, else random weights on the device, in the resolved dtype)
    with the config's adapters attached as the recipe attaches them."""
    if cfg.adapter.method == "qlora":
        if folder is None:
            raise ValueError("qlora loads its 4-bit base from a model folder")
        base = load.load_model(folder, cfg.model, cfg.quantization, accelerator.device)
    else:
        base = random_model(shape, spec.layers, streams.tokenizer, accelerator.device, dtype=cfg.model.dtype,
                            attn_implementation=cfg.model.attn_implementation)
    torch.manual_seed(SEED)
    return adapters.attach(base, cfg.adapter, cfg.train.gradient_checkpointing,
                           autocast=cfg.train.mixed_precision != "no")


def measure(shape: Shape, spec: Method, streams: Streams, peaks: dict[str, Any], folder: str | None = None) -> dict[str, Any]:
    """Build, prepare and time `spec` on each of its layouts; frees the GPU before returning."""
    started = time.perf_counter()
    steps = shape.warmup_steps + shape.timed_steps
    resolved = [resolved_config(shape, spec, streams.tasks, layout, steps, folder) for layout in spec.layouts]
    cfgs = {layout_name(cfg): cfg for cfg, _ in resolved}
    first = resolved[0][0]
    accelerator = accelerator_for(first, spec.compile_backend)
    model = build(shape, spec, first, streams, accelerator, folder)
    trainable, total = adapters.count_parameters(model)
    optimizer = optim.build_optimizer(model, first.train)
    scheduler = optim.build_scheduler(optimizer, first.train, steps * len(cfgs))
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    default = layout_name(resolved_config(shape, spec, streams.tasks, "default", steps)[0])
    out: dict[str, Any] = {"method": spec.method, "layers": spec.layers, "trainable_params": trainable,
                           "total_params": total, "gradient_checkpointing": spec.gradient_checkpointing,
                           "compile": spec.compile_backend or False, "answer_logits_only": spec.answer_logits_only,
                           "settings": settings(first), "default_layout": default, "layouts": list(cfgs),
                           "overrides": {layout_name(c): o for c, o in resolved},
                           "build_s": round(time.perf_counter() - started, 2)}
    try:
        for name, cfg in cfgs.items():
            out[name] = run_layout(shape, spec, streams, cfg, model, optimizer, scheduler, accelerator, peaks)
    finally:
        accelerator.free_memory()  # the Accelerator holds the prepared model and optimizer too
        del model, optimizer, scheduler
        free_memory()
    return out


def run_layout(shape: Shape, spec: Method, streams: Streams, cfg: RunConfig, model: Any, optimizer: Any,
               scheduler: Any, accelerator: Any, peaks: dict[str, Any]) -> dict[str, Any]:
    """`warmup_steps` then `timed_steps` optimizer steps through loop.train_step; see the module docstring."""
    prepared = streams.layout("packed" if cfg.data.packing else "padded")
    steps = shape.warmup_steps + shape.timed_steps
    # Shared-prefix rows carry the mask of the attention they run under, chosen as the train recipe chooses it.
    prefix_mask = (attention.select_for_shared_prefix(accelerator.unwrap_model(model), cfg.adapter.virtual_tokens)
                   if cfg.shares_prefix else None)
    plan = loop.make_plan(cfg.train, prepared, SEED, 1, share_prefix=cfg.shares_prefix, prefix_mask=prefix_mask)
    n_tasks = len(prepared.task_names)
    if cuda():
        torch.cuda.reset_peak_memory_stats()
    losses, seconds, tokens, positions, flops = [], [], [], [], []
    synchronize()
    stamp = time.perf_counter()
    for step in range(steps):  # timed from one step's end to the next: batch making included, as in a run
        batches = loop.batches_for_step(prepared, plan, step, SEED, 0, streams.pad_id, accelerator.device)
        result = loop.train_step(model, optimizer, scheduler, accelerator, batches, cfg.train.max_grad_norm, n_tasks,
                                 cfg.train.answer_logits_only)
        synchronize()
        seconds.append(time.perf_counter() - stamp)
        losses.append(result.loss)
        tokens.append(result.tokens)
        # Bookkeeping (it reads the batches back), off the clock. Shared-prefix rows do the padded rows'
        # work in fewer positions: their FLOPs are counted on the same examples padded, so the MFU of both
        # layouts measures the same model work and their ratio is their speed ratio.
        positions.append(sum(b["input_ids"].numel() for b in batches))
        counted = batches if not plan.share_prefix else loop.batches_for_step(
            prepared, dataclasses.replace(plan, share_prefix=False), step, SEED, 0, streams.pad_id, "cpu")
        flops.append(batch_flops(shape, spec, counted))
        stamp = time.perf_counter()
    timed = slice(shape.warmup_steps, None)
    tokens_per_s = sum(tokens[timed]) / sum(seconds[timed])
    flop_rate = sum(f["total"] for f in flops[timed]) / sum(seconds[timed])
    return {
        "micro_batch_size": plan.micro_batch_size, "tokens_per_s": round(tokens_per_s, 1),
        "real_tokens_per_step": round(statistics.mean(tokens[timed]), 1),
        "positions_per_step": round(statistics.mean(positions[timed]), 1),
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
