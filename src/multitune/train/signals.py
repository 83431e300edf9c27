"""Preemption: SIGTERM or SIGINT asks the run to stop at the next step boundary with a checkpoint.

Spot instances and pod schedulers send SIGTERM and wait a little before SIGKILL; Ctrl-C sends SIGINT.
The first one only sets a flag, which the training recipe polls after each step (all processes agree
through an all-reduce, so they stop at the same step and save the same checkpoint), then ends the loop
and returns a `Stopped`. A second SIGINT aborts at once: the last complete checkpoint is untouched
because checkpoints are written atomically.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any


@dataclass(frozen=True)
class Stopped:
    """Training stopped on a signal after saving a checkpoint (the command exits with EXIT_PREEMPTED)."""

    signal_name: str
    step: int
    checkpoint: Path

    def message(self) -> str:
        return (f"stopped by {self.signal_name} after step {self.step}; checkpoint saved to {self.checkpoint}.\n"
                "Run the same command again to resume from it.")


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
