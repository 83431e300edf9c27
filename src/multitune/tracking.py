"""Where metrics go: `metrics.jsonl` always, Weights & Biases when configured. The loop talks to one
`Trackers` object and never asks which backends are on (a run without wandb never imports it)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Protocol

from multitune.config.schema import RunConfig
from multitune.errors import UserError
from multitune.io import append_jsonl, write_text_atomic


class Tracker(Protocol):
    def log(self, row: dict[str, Any], step: int) -> None: ...
    def log_predictions(self, task: str, records: list[dict[str, Any]], step: int) -> None: ...
    def finish(self) -> None: ...

# Prediction tables show these columns (when present) and at most this many rows per task.
TABLE_COLUMNS = ("row", "input", "gold", "prediction", "score", "correct", "generated", "generated_correct")
TABLE_MAX_ROWS = 1000


class JsonlTracker:
    """One JSON object per logged step in `metrics.jsonl`, flushed as it is written.

    `keep_rows=None` starts a new file; a number keeps that many complete rows of an existing one (a
    resumed run continues the file from where its checkpoint was taken).
    """

    def __init__(self, path: Path, keep_rows: int | None = None):
        self.path = path
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.is_file() else []
        kept = [line for line in lines if line.endswith("\n")][: keep_rows or 0]
        write_text_atomic(path, "".join(kept))
        self.rows_written = len(kept)

    def log(self, row: dict[str, Any], step: int) -> None:
        try:
            append_jsonl(self.path, {"step": step, **{k: _finite_or_none(v) for k, v in row.items()}})
        except OSError as e:
            raise UserError(f"could not write the metrics log: {e.strerror}", where=str(self.path),
                            fix="free disk space or fix the folder's permissions; the run resumes from its "
                                "last checkpoint when started again") from None
        self.rows_written += 1

    def log_predictions(self, task: str, records: list[dict[str, Any]], step: int) -> None:
        pass  # predictions are written to eval/<task>/predictions.jsonl already

    def finish(self) -> None:
        pass


class WandbTracker:
    def __init__(self, cfg: RunConfig, config_dict: dict[str, Any], run_id: str | None = None):
        try:
            import wandb
        except ImportError:
            raise UserError("logging.wandb is set but wandb is not installed",
                            fix="pip install 'multitune[wandb]', or remove logging.wandb") from None
        w = cfg.logging.wandb
        assert w is not None
        os.makedirs(cfg.output_dir, exist_ok=True)
        self._wandb = wandb
        # A resumed run continues the same wandb run (its id is kept in the checkpoint).
        self.run = wandb.init(
            project=w.project, entity=w.entity, name=w.run_name, tags=list(w.tags), mode=w.mode,
            dir=cfg.output_dir, config=config_dict, id=run_id, resume="allow" if run_id else None,
        )
        self.run_id = self.run.id

    def log(self, row: dict[str, Any], step: int) -> None:
        self.run.log(row, step=step)

    def log_predictions(self, task: str, records: list[dict[str, Any]], step: int) -> None:
        """A `predictions/<task>` table: one row per evaluated example (the first TABLE_MAX_ROWS)."""
        if not records:
            return
        columns = [c for c in TABLE_COLUMNS if c in records[0]]
        data = [[_cell(r.get(c)) for c in columns] for r in records[:TABLE_MAX_ROWS]]
        self.run.log({f"predictions/{task}": self._wandb.Table(columns=columns, data=data)}, step=step)

    def finish(self) -> None:
        self.run.finish()


class Trackers:
    """Fans a row out to every tracker; with none (not the main process) it does nothing."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    @property
    def run_id(self) -> str | None:
        """The external tracker's run id (kept in checkpoints so a resumed run continues it)."""
        return next((t.run_id for t in self.trackers if hasattr(t, "run_id")), None)

    @property
    def rows_written(self) -> int:
        return next((t.rows_written for t in self.trackers if hasattr(t, "rows_written")), 0)

    def log(self, row: dict[str, Any], step: int) -> None:
        for t in self.trackers:
            t.log(row, step)

    def log_predictions(self, task: str, records: list[dict[str, Any]], step: int) -> None:
        for t in self.trackers:
            t.log_predictions(task, records, step)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()


def make_trackers(cfg: RunConfig, is_main: bool, keep_rows: int | None = None, run_id: str | None = None) -> Trackers:
    """The run's trackers (none on other processes than the main one). For a resumed run, `keep_rows`
    is the number of metrics.jsonl rows its checkpoint had seen and `run_id` the wandb run to continue."""
    if not is_main:
        return Trackers([])
    trackers: list[Tracker] = [JsonlTracker(Path(cfg.output_dir) / "metrics.jsonl", keep_rows)]
    if cfg.logging.wandb is not None:
        trackers.append(WandbTracker(cfg, cfg.model_dump(mode="json"), run_id))
    return Trackers(trackers)


def _cell(v: Any) -> Any:
    # wandb tables want one type per column: text stays text, numbers stay numbers, None stays None.
    return v if v is None or isinstance(v, bool | int | float | str) else str(v)


def _finite_or_none(v: Any) -> Any:
    # JSON has no NaN/Infinity; write null so every line stays valid JSON.
    return None if isinstance(v, float) and not math.isfinite(v) else v
