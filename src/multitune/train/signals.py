"""Preemption: SIGTERM or SIGINT asks the run to stop at the next step boundary with a checkpoint.

Spot instances and pod schedulers send SIGTERM and wait a little before SIGKILL; Ctrl-C sends SIGINT.
The first one only sets a flag, which the loop polls after each step (all processes agree through an
all-reduce, so they stop at the same step and save the same checkpoint). A second SIGINT aborts at
once: the last complete checkpoint is untouched because checkpoints are written atomically.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import torch


class Preempted(Exception):
    """Training stopped on a signal after saving a checkpoint."""

    def __init__(self, signal_name: str, step: int, checkpoint: str):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        super().__init__(
            f"stopped by {signal_name} after step {step}; checkpoint saved to {checkpoint}.\n"
            "Run the same command again to resume from it."
        )


class StopRequests:
    """Context manager installing the handlers (main thread only) and restoring the old ones on exit."""

    def __init__(self, is_main: bool = True) -> None:
        self.is_main = is_main
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received == "SIGINT" and name == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without a checkpoint
        self.received = self.received or name
        if self.is_main:
            print(f"\n{name} received: saving a checkpoint after this step, then stopping "
                  "(Ctrl-C again to abort at once)", flush=True)

    def agreed(self, accelerator: Any) -> bool:
        """True on every process when any process received a stop signal."""
        flag = torch.tensor([1.0 if self.received else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, "max").item() > 0)
