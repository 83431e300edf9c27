"""Where a plan is for: a GPU of the table (or given by its numbers), this machine's GPU, or this CPU."""

from __future__ import annotations

from dataclasses import dataclass

from multitune.config import device
from multitune.plan.activations import Precision
from multitune.plan.gpus import Gpu, find_gpu

# No vendor publishes a CPU's "peak" for this; a plan on a CPU is calibrated with --measure. These rates
# are what bench/plan/estimate.py calibrated on this project's 2-core machine with one thread per process:
# 23-25 GFLOP/s of training matmuls per thread, and about 4 GB/s for the optimizer step's element-wise
# updates of SmolLM2's 134M float32 weights (docs/benchmarks.md).
CPU_GFLOPS_PER_THREAD = 24.0
CPU_BANDWIDTH_GBS = 4.0
DEFAULT_MFU = {"full": 0.40, "lora": 0.35, "dora": 0.25, "qlora": 0.25, "ia3": 0.35, "prompt_tuning": 0.35,
               "prefix_tuning": 0.35}
"""Assumed model FLOPs utilisation on a GPU: what well-tuned bf16 training reaches, lower for small
adapter matmuls, DoRA's weight norms and QLoRA's dequantisation (an (IA)^3 scale or virtual tokens add
no matmul of their own). `--mfu` overrides it."""


@dataclass(frozen=True)
class Target:
    name: str
    memory_bytes: float
    tflops: float
    gpus: int = 1
    on_gpu: bool = True
    bf16: bool = True
    bandwidth_gbs: float = 1000.0
    assumed_rate: bool = False
    """True for a CPU, whose rate is an assumption until `--measure` calibrates it."""
    nodes: int = 1
    """Machines the GPUs are spread over (`gpus` in all): the layouts differ in what crosses between them."""


def choose_target(gpu: str | None, memory_gib: float | None, tflops: float | None, gpus: int,
                  nodes: int = 1) -> Target:
    """The named or described GPU; else this machine's CUDA GPU; else this CPU (its memory, an assumed rate)."""
    import dataclasses

    return dataclasses.replace(_target(gpu, memory_gib, tflops, gpus), nodes=nodes)


def _target(gpu: str | None, memory_gib: float | None, tflops: float | None, gpus: int) -> Target:
    import torch

    if gpu is not None or memory_gib is not None or tflops is not None:
        g = find_gpu(gpu) if gpu else Gpu("GPU", 0.0, 0.0)
        mem, tf = memory_gib or g.memory_gib, tflops or g.tflops
        if not mem or not tf:
            from multitune.errors import UserError

            raise UserError("a GPU needs both its memory and its bf16 TFLOPS", where="--gpu-memory / --gpu-tflops",
                            fix="give both, e.g. --gpu-memory 80 --gpu-tflops 312, or a name: --gpu A100-80GB")
        return Target(g.name if gpu else f"{mem:g} GiB, {tf:g} TF", mem * 1024**3, tf, gpus, True, g.bf16,
                      g.bandwidth_gbs if gpu else 1000.0)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        known = _match(props.name, props.total_memory / 1024**3)
        return Target(props.name, float(props.total_memory), known.tflops if known else 100.0, gpus, True,
                      torch.cuda.is_bf16_supported(), known.bandwidth_gbs if known else 1000.0,
                      assumed_rate=known is None)
    import psutil

    threads = torch.get_num_threads()  # what training will use: OMP_NUM_THREADS, else the cores
    return Target(f"this CPU ({threads} thread{'s' if threads > 1 else ''})", float(psutil.virtual_memory().total),
                  threads * CPU_GFLOPS_PER_THREAD / 1000, 1, False, True, CPU_BANDWIDTH_GBS, assumed_rate=True)


def _match(device_name: str, memory_gib: float) -> Gpu | None:
    """The table's entry for a CUDA device name such as 'NVIDIA H100 80GB HBM3' or 'NVIDIA GeForce RTX
    4090': the same model name (spaces and dashes ignored) and the closest memory."""
    from multitune.plan.gpus import GPUS

    name = device_name.upper().replace(" ", "").replace("-", "")
    found = [g for g in GPUS if g.name.split("-")[0].upper().replace("-", "") in name]
    if "PCIE" in name:
        found = [g for g in found if "PCIe" in g.name] or found
    return min(found, key=lambda g: abs(g.memory_gib - memory_gib), default=None)


def precision_for(cfg, target: Target) -> Precision:
    """Bytes per element on the target, as a run there would choose them (config/device.py: `auto` weights
    are bfloat16 for an adapter's base on a GPU with bf16, else float32; `auto` mixed precision is bf16
    there); QLoRA computes in its compute dtype; mixed precision makes activations 16-bit."""
    sizes = {"float32": 4, "bfloat16": 2, "float16": 2}
    weights = sizes[device.resolved_dtype(cfg, target.on_gpu, target.bf16)]
    if cfg.adapter.method == "qlora":
        weights = sizes[cfg.quantization.compute_dtype]
    autocast = device.resolved_mixed_precision(cfg, target.on_gpu, target.bf16) in ("bf16", "fp16")
    return Precision(act=2 if autocast else weights, weights=weights, adapter=4, autocast=autocast)
