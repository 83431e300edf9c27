"""`run_stats.json`: what a run cost, written beside its metrics when it ends, for the sweep table and anyone
comparing runs.

```
{"method": "lora", "trainable_params": 4884480, "total_params": 139400000, "steps": 500,
 "tokens": 412000, "train_seconds": 1100.2, "eval_seconds": 121.3, "wall_seconds": 1320.5, "tokens_per_s": 374.5,
 "peak_memory_bytes": 2.1e9, "peak_memory_kind": "process high-water resident memory (VmHWM)",
 "adapter_bytes": 19568672}
```

Times and the peak add up every session of a resumed run (`train.state.TrainState`); tokens are the
non-padding tokens trained on; `train_seconds` the optimizer steps, `eval_seconds` every evaluation
(baselines included); `adapter_bytes` is the size on disk of the saved weights (`adapter/*.safetensors`:
the adapter, or the whole model for full fine-tuning), tokenizer files left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RUN_STATS = "run_stats.json"


def adapter_bytes(run_dir: str | Path) -> int:
    """Bytes of the saved weights in `run_dir/adapter` (0 when none are saved yet)."""
    return sum(p.stat().st_size for p in (Path(run_dir) / "adapter").glob("*.safetensors"))


def run_stats(run_dir: str | Path, method: str, params: tuple[int, int], state: Any, memory_kind: str
              ) -> dict[str, Any]:
    """The stats of a run that has just written its adapter; `state` is its `TrainState`."""
    return {"method": method, "trainable_params": params[0], "total_params": params[1], "steps": state.step,
            "tokens": state.tokens_seen, "train_seconds": state.train_seconds,
            "eval_seconds": state.eval_seconds, "wall_seconds": state.wall_seconds,
            "tokens_per_s": state.tokens_seen / state.train_seconds if state.train_seconds else None,
            "peak_memory_bytes": state.peak_memory_bytes, "peak_memory_kind": memory_kind,
            "adapter_bytes": adapter_bytes(run_dir)}


def time_line(state: Any) -> str:
    """Where the run's wall time went, every session added, for the line that ends a run; `state` is its
    `TrainState`.

    >>> from multitune.train.state import TrainState
    >>> time_line(TrainState(train_seconds=1100.0, eval_seconds=121.0, wall_seconds=1330.0))
    'time: 22.2 min: training steps 18.3 min (83%), evaluation 2.0 min (9%), the rest (loading, checkpoints, outputs) 1.8 min'
    """
    wall = max(state.wall_seconds, 1e-9)
    rest = max(state.wall_seconds - state.train_seconds - state.eval_seconds, 0.0)
    return (f"time: {state.wall_seconds / 60:.1f} min: training steps {state.train_seconds / 60:.1f} min "
            f"({state.train_seconds / wall:.0%}), evaluation {state.eval_seconds / 60:.1f} min "
            f"({state.eval_seconds / wall:.0%}), the rest (loading, checkpoints, outputs) {rest / 60:.1f} min")


def load_run_stats(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's stats, or None for a run that has not finished (or predates them)."""
    path = Path(run_dir) / RUN_STATS
    return json.loads(path.read_text()) if path.is_file() else None
