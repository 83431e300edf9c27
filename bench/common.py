"""What the benchmarks share: the repository root, the environment of the processes they start (threads,
sleeping OpenMP threads, this tree's sources), threads in the benchmark's own process, and a clock.

Only the standard library at import time: `bench.export.llamacpp` runs its second half under another
interpreter (llama.cpp's venv), which imports this module too.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def default_threads() -> int:
    """`OMP_NUM_THREADS` if set, else the cores this process may run on."""
    return int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))


def child_env(threads: int | None = None, src: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a process a benchmark starts (a `multitune` command, one side of a comparison).

    - `src` (default: this tree's `src/`) first on PYTHONPATH, so the child runs the code being measured
      even where the venv's editable install points at another checkout;
    - idle OpenMP threads sleep (`OMP_WAIT_POLICY=PASSIVE`, as `multitune` sets it) unless the environment
      says otherwise: spinning threads of one process slow every other on a small machine many times over;
    - `threads`: OpenMP and MKL threads of the child (None leaves them as the environment has them);
    - `extra` last, so a caller can override any of the above (e.g. `OMP_WAIT_POLICY="ACTIVE"`).

    >>> env = child_env(2, OMP_WAIT_POLICY="ACTIVE")
    >>> env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env["OMP_WAIT_POLICY"]
    ('2', '2', 'ACTIVE')
    """
    path = os.pathsep.join(filter(None, [str(src or REPO / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    if threads is not None:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return env | extra


def set_threads(threads: int) -> None:
    """This process's threads: the environment (read by OpenMP only if torch is not imported yet) and torch's
    intra-op pool (which takes effect either way)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def load_average() -> float:
    """The 1-minute load average: above the cores, another process shared them and the timing is noise."""
    return round(os.getloadavg()[0], 2)


@dataclass
class Clock:
    """What `stopwatch` measured: wall seconds and the load average before and after."""

    load_before: float
    seconds: float = 0.0
    load_after: float = 0.0

    @property
    def minutes(self) -> float:
        return round(self.seconds / 60, 1)


@contextmanager
def stopwatch() -> Iterator[Clock]:
    """Time the block: `with stopwatch() as clock: ...`, then `clock.seconds`, `clock.load_before/after`."""
    clock = Clock(load_before=load_average())
    start = time.perf_counter()
    try:
        yield clock
    finally:
        clock.seconds = time.perf_counter() - start
        clock.load_after = load_average()


@dataclass
class Timings(Generic[T]):
    """What `warm_then_time` measured: the seconds and result of each timed call, the warm-up's seconds,
    and the load average around the timed calls."""

    warmup_seconds: float = 0.0
    seconds: list[float] = field(default_factory=list)
    results: list[T] = field(default_factory=list)
    load_before: float = 0.0
    load_after: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def warm_then_time(fn: Callable[[int], T], repeats: int, warmup: int = 1) -> Timings[T]:
    """Call `fn(0)` .. `fn(warmup - 1)` untimed but for their sum (allocations, caches, compilation), then
    `fn(warmup)` .. `fn(warmup + repeats - 1)` each timed; the index lets `fn` take step i of a run.

    >>> t = warm_then_time(lambda i: i * i, repeats=3, warmup=2)
    >>> t.results, len(t.seconds), t.median >= 0
    ([4, 9, 16], 3, True)
    """
    out: Timings[T] = Timings()
    start = time.perf_counter()
    for i in range(warmup):
        fn(i)
    out.warmup_seconds = time.perf_counter() - start
    out.load_before = load_average()
    for i in range(warmup, warmup + repeats):
        start = time.perf_counter()
        out.results.append(fn(i))
        out.seconds.append(time.perf_counter() - start)
    out.load_after = load_average()
    return out
