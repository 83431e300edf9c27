"""`multitune doctor`: what this machine has, and whether the processes of a launch can talk.

Run it alone to see versions and GPUs; run it under the launcher of a multi-node job
(`torchrun ... -m multitune doctor`, or `accelerate launch ... -m multitune doctor`) to check that every
process joins the group and an all-reduce completes, so a hang becomes a message with a timeout.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import time
from datetime import timedelta

PACKAGES = ["torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "flash-attn", "liger-kernel",
            "wandb", "huggingface_hub"]
LAUNCH_VARS = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "GROUP_RANK", "NODE_RANK", "MACHINE_RANK"]


def versions() -> list[str]:
    lines = [f"python        {platform.python_version()} ({platform.platform()})"]
    for name in PACKAGES:
        try:
            lines.append(f"{name:<13} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"{name:<13} not installed")
    return lines


def devices() -> list[str]:
    import torch

    lines = [f"torch CUDA    {torch.version.cuda or 'none (CPU build)'}"]
    if not torch.cuda.is_available():
        return [*lines, "GPUs          none: training runs on the CPU (fp32 or bf16)"]
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else "unknown"
    lines.append(f"NCCL          {nccl}")
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        bf16 = "yes" if p.major >= 8 else "no (use fp16)"
        lines.append(f"GPU {i}         {p.name}, {p.total_memory / 2**30:.1f} GiB, compute {p.major}.{p.minor}, bf16 {bf16}")
    flash = importlib.util.find_spec("flash_attn") is not None
    lines.append(f"flash-attn    {'available' if flash else 'not installed: attn_implementation sdpa'}")
    return lines


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def check_group(timeout_s: float) -> tuple[bool, str]:
    """Join the process group and all-reduce a tensor; (ok, message) for this process."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"])
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    cuda = torch.cuda.is_available()
    # Without blocking wait an NCCL collective that never completes would hang instead of timing out.
    os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
    started = time.monotonic()
    try:
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
        x = torch.ones(1, device="cuda" if cuda else "cpu")
        dist.all_reduce(x)
        ok = int(x.item()) == world
        dist.destroy_process_group()
    except Exception as e:  # a timeout or refused connection surfaces as several torch error types
        return False, (f"rank {rank}/{world}: could not complete an all-reduce with the others through {where} "
                       f"within {timeout_s:.0f} s ({type(e).__name__}: {str(e).splitlines()[0][:160]}). Check that "
                       "MASTER_ADDR is reachable from every node, MASTER_PORT is open, every node started the "
                       "launcher with the same world size, and (NCCL) NCCL_SOCKET_IFNAME names the right interface")
    elapsed = time.monotonic() - started
    if not ok:
        return False, f"rank {rank}/{world}: all-reduce returned {x.item()}, expected {world}"
    return True, f"rank {rank}/{world}: joined {where} and all-reduced in {elapsed:.2f} s"


def run(timeout_s: float = 60.0) -> int:
    rank = int(os.environ.get("RANK", 0))
    if rank == 0:
        print("\n".join(versions() + devices()))
        env = {k: os.environ[k] for k in LAUNCH_VARS if k in os.environ}
        print("launcher      " + (", ".join(f"{k}={v}" for k, v in env.items()) if env else "none (one process)"))
    if not launched():
        return 0
    ok, message = check_group(timeout_s)
    print(("ok: " if ok else "error: ") + message, flush=True)
    return 0 if ok else 1
