"""Common GPUs: memory and dense bf16 (fp16 where bf16 is missing) tensor peak, from the vendors'
datasheets (dense, without 2:4 sparsity; GeForce cards at their FP32-accumulate rate, which is what
PyTorch uses). Memory is what `nvidia-smi` reports as total, in GiB."""

from __future__ import annotations

import re
from dataclasses import dataclass

from multitune.errors import UserError


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    tflops: float
    bf16: bool = True
    note: str = ""
    bandwidth_gbs: float = 1000.0
    """Memory bandwidth in GB/s: the optimizer step's element-wise updates are bound by it."""


GPUS = [
    Gpu("H200", 140.4, 989.0, note="SXM, 141 GB HBM3e", bandwidth_gbs=4800),
    Gpu("H100-80GB", 79.6, 989.0, note="SXM", bandwidth_gbs=3350),
    Gpu("H100-PCIe", 79.6, 756.0, bandwidth_gbs=2000),
    Gpu("A100-80GB", 80.0, 312.0, bandwidth_gbs=2039),
    Gpu("A100-40GB", 40.0, 312.0, bandwidth_gbs=1555),
    Gpu("L40S", 44.4, 362.0, bandwidth_gbs=864),
    Gpu("A6000", 48.0, 154.8, note="RTX A6000", bandwidth_gbs=768),
    Gpu("RTX6000-Ada", 48.0, 364.2, bandwidth_gbs=960),
    Gpu("A40", 44.9, 149.7, bandwidth_gbs=696),
    Gpu("L4", 22.5, 121.0, bandwidth_gbs=300),
    Gpu("A10G", 22.5, 70.0, note="AWS g5; a cut-down A10", bandwidth_gbs=600),
    Gpu("RTX4090", 24.0, 165.2, bandwidth_gbs=1008),
    Gpu("RTX3090", 24.0, 71.0, bandwidth_gbs=936),
    Gpu("V100-32GB", 32.0, 125.0, bf16=False, note="fp16 only", bandwidth_gbs=900),
    Gpu("T4", 15.0, 65.0, bf16=False, note="fp16 only", bandwidth_gbs=320),
]
ALIASES = {"H100": "H100-80GB", "H100-SXM": "H100-80GB", "A100": "A100-80GB", "4090": "RTX4090",
           "3090": "RTX3090", "RTX-4090": "RTX4090", "RTX-3090": "RTX3090", "RTX-A6000": "A6000"}
EXPLICIT = re.compile(r"^\s*(?P<mem>\d+(\.\d+)?)\s*(GB|GIB)\s*,\s*(?P<tf>\d+(\.\d+)?)\s*(TF|TFLOPS)\s*$", re.I)


def find_gpu(name: str) -> Gpu:
    """A GPU of the table by name (case and `-`/`_`/space insensitive), or explicit numbers such as
    `80GB,312TF`. Raises UserError listing the known names.

    >>> find_gpu("a100_80gb").tflops
    312.0
    >>> find_gpu("24GB,165TF").memory_gib
    24.0
    """
    m = EXPLICIT.match(name)
    if m:
        return Gpu(f"{m['mem']} GiB, {m['tf']} TF", float(m["mem"]), float(m["tf"]))
    key = _key(name)
    target = next((v for k, v in ALIASES.items() if _key(k) == key), name)
    for gpu in GPUS:
        if _key(gpu.name) == _key(target):
            return gpu
    raise UserError(f"unknown GPU {name!r}", where="--gpu",
                    fix=f"use one of {', '.join(g.name for g in GPUS)}, or give its numbers: "
                        "--gpu 80GB,312TF (memory, dense bf16 TFLOPS) or --gpu-memory 80 --gpu-tflops 312")


def _key(s: str) -> str:
    return re.sub(r"[\s_\-]", "", s).upper()


def gpu_table() -> str:
    rows = [f"{'GPU':<13} {'memory':>9} {'bf16 TF':>8} {'GB/s':>6}  note"]
    rows += [f"{g.name:<13} {g.memory_gib:>5.1f} GiB {g.tflops:>8.1f} {g.bandwidth_gbs:>6.0f}  {g.note}" for g in GPUS]
    return "\n".join(rows)
