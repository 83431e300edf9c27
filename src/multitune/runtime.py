"""CPU threads: no oversubscription when several processes share a machine's cores; the process's peak memory;
`print0`, how the recipes print when several processes run (the main process speaks for all).

PyTorch's CPU kernels run on an OpenMP pool of one thread per core, whose idle threads spin-wait for the
next parallel region. Two such processes on the same cores fight: measured here, a SmolLM2 training step
took 41 s instead of 2.6 s with two runs on 2 cores, and 3.2 s with `OMP_WAIT_POLICY=PASSIVE`. So:

- several processes on one machine (torchrun, `accelerate launch --cpu --num_processes N`) each get an
  equal share of the cores, as torchrun does, unless `OMP_NUM_THREADS` says otherwise;
- idle OpenMP threads sleep instead of spinning (`OMP_WAIT_POLICY=PASSIVE`) unless the environment says
  otherwise; it must be set before the OpenMP runtime starts, so `cli.main` calls `passive_openmp()` first.
  docs/benchmarks.md has what this costs a run alone on the machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def print0(accelerator: Any, *values: object, **kwargs: Any) -> None:
    """`print` on the run's main process only (global rank 0), as nanochat's `print0`: one copy of each
    line however many processes and nodes run. (`accelerator.print` prints once per node.) Writing a
    shared file is not printing: that goes in one `if accelerator.is_main_process:` block per output."""
    if accelerator.is_main_process:
        print(*values, **kwargs)


def passive_openmp() -> None:
    """Idle OpenMP threads sleep (unless `OMP_WAIT_POLICY` is set). Call before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cpu_threads_per_process(cores: int, local_processes: int) -> int:
    """Each process's share of the machine's cores, at least one.

    >>> cpu_threads_per_process(16, 4), cpu_threads_per_process(2, 2), cpu_threads_per_process(2, 3)
    (4, 1, 1)
    """
    return max(1, cores // max(1, local_processes))


def configure_cpu_threads() -> str | None:
    """On a machine without CUDA, set torch's thread count to this process's share of the cores, unless
    `OMP_NUM_THREADS` is set. Returns what it did, for the run's log (None when it left things alone)."""
    import torch

    if torch.cuda.is_available() or "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = cpu_threads_per_process(cores, local)
    torch.set_num_threads(threads)
    return f"CPU threads: {threads} per process ({cores} cores, {local} process{'es' if local > 1 else ''} here)"


BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_units(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU has bf16 matmul units (AVX-512 BF16 or AMX), from /proc/cpuinfo's flags; None where
    that cannot be read (not Linux). Without them a bf16 matmul takes a slow path: 1.0 against 181 GFLOP/s
    for float32 on this project's 2-core AVX2 machine (docs/benchmarks.md).

    >>> cpu_bf16_units("flags\t\t: fpu avx2 fma"), cpu_bf16_units("flags\t\t: avx2 amx_bf16 amx_tile")
    (False, True)
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    return any(flag in flags for flag in BF16_FLAGS)


def tf32_matmuls(cuda: bool) -> bool:
    """On a CUDA GPU, let float32 matmuls use TF32 tensor cores (Ampere and newer: float32 master weights,
    float32 LoRA branches and losses then run at tensor-core speed, with a 10-bit mantissa per product but
    float32 accumulation, which training tolerates). A CPU is left alone: there "high" precision may let
    oneDNN round float32 matmuls through bf16. Returns whether it switched them on."""
    if not cuda:
        return False
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def peak_memory() -> tuple[float, str]:
    """(bytes, what they are) of this process's peak memory so far: `torch.cuda.max_memory_allocated` on a
    GPU, else the high-water resident memory (VmHWM, Linux) of the whole process."""
    import torch

    if torch.cuda.is_available():
        return float(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated"
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024, "process high-water resident memory (VmHWM)"
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process maximum resident size"
