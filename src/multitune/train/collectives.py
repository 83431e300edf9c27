"""Collectives the run's control flow needs, named so a reader sees where processes synchronise.

Every process must call a collective at the same point, or the others wait forever: call these on every
process, outside any branch that differs between processes.
"""

from __future__ import annotations

from typing import Any

import torch


def any_process(flag: bool, accelerator: Any) -> bool:
    """True on every process when `flag` is true on any process (an all-reduce with max; one process:
    the flag itself)."""
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, "max").item() > 0)
