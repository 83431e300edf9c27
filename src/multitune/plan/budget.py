"""One process's peak memory from its terms, FSDP sharding, and the advice when it does not fit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Budget:
    """Bytes per process. `weights` is by dtype; `fixed` is memory outside the model (on a CPU, the
    process itself: Python, torch and the libraries, measured); `gather` is FSDP's all-gather buffers."""

    weights: dict[str, float]
    trainable: float
    gradients: float
    optimizer: float
    activations: dict[str, float]
    step_temporary: float = 0.0
    gather: float = 0.0
    fixed: float = 0.0
    retained: float = 0.0
    """On a CPU, freed blocks glibc's malloc keeps: measured here at about one micro-batch's activations
    (the blocks of one step are too fragmented for the next step's tensors of other sizes to reuse)."""
    grads_during_backward: bool = False
    """With gradient accumulation, the earlier micro-batches' gradients are held during a backward pass."""
    shards: int = 1
    whole: tuple[str, ...] = ()
    """Weight dtypes FSDP leaves whole on every process: bitsandbytes' 4-bit weights (`nf4`)."""
    notes: list[str] = field(default_factory=list)

    def weights_here(self) -> dict[str, float]:
        """Each dtype's weight bytes one process holds: a 1/`shards` shard, or all of them if kept whole."""
        return {k: v if k in self.whole else v / self.shards for k, v in self.weights.items()}

    @property
    def static(self) -> float:
        """Weights, trainable copies and optimizer states, sharded by FSDP over `shards` processes."""
        return sum(self.weights_here().values()) + (self.trainable + self.optimizer) / self.shards + self.gather

    @property
    def backward_peak(self) -> float:
        held = self.gradients / self.shards if self.grads_during_backward else 0.0
        return self.fixed + self.retained + self.static + held + sum(self.activations.values())

    @property
    def step_peak(self) -> float:
        """The optimizer step: every gradient, the states, and the update's temporaries."""
        return self.fixed + self.retained + self.static + (self.gradients + self.step_temporary) / self.shards

    @property
    def peak(self) -> float:
        return max(self.backward_peak, self.step_peak)


def adamw_temporary(trainable_bytes: float, largest_param_bytes: float, on_gpu: bool) -> float:
    """torch's AdamW on CUDA runs the multi-tensor (foreach) update, whose temporaries are about one more
    copy of the trainable parameters; on a CPU it updates one tensor at a time (the largest one's size)."""
    return trainable_bytes if on_gpu else largest_param_bytes


def fsdp_gather_bytes(layer_params: int, param_bytes: float) -> float:
    """FSDP (full shard) gathers one decoder layer's weights to compute it and prefetches the next."""
    return 2.0 * layer_params * param_bytes


def largest_fitting(capacity: float, peak_at: Callable[[int], float], upper: int) -> int:
    """The largest n in 1..upper with peak_at(n) <= capacity (peak_at grows with n), or 0 if none.

    >>> largest_fitting(100.0, lambda n: 10.0 * n, 64)
    10
    >>> largest_fitting(5.0, lambda n: 10.0 * n, 64)
    0
    """
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if peak_at(mid) <= capacity:
            lo = mid
        else:
            hi = mid - 1
    return lo


def smallest_fitting(capacity: float, peak_at: Callable[[int], float], candidates: list[int]) -> int | None:
    """The first candidate n (in the given order) with peak_at(n) <= capacity, or None."""
    return next((n for n in candidates if peak_at(n) <= capacity), None)
