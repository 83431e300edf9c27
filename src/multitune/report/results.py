"""The evaluation files of a run, written and read in one place (the model card, the HTML report and the
tables all read them through `load_summary`).

`eval/metrics.json` (format 2):

```
{
  "format": 2,
  "final_step": 174,                       # optimizer steps of the evaluated model; null if unknown
  "model": "trained",                      # trained | base | merged: what `after` evaluated
  "primary": {"claims": "accuracy", "instruct": "rougeL"},   # each task's headline metric
  "best": {"metric": "mean", "higher_is_better": true, "step": 120, "value": 0.93} | null,
  "before": {"claims": {"loss": 7.5, "accuracy": 0.52, ...}, ...} | null,   # the untrained model
  "after":  {"claims": {"loss": 0.01, "accuracy": 1.0, ...}, ...},
  "baseline_shots": 3,                     # eval.baseline_shots (0: no in-context baseline)
  "shots": {"claims": {"accuracy": 0.61, "truncated": 0.0, ...}, ...} | null,   # untrained, k-shot prompts
  "retention": ["quiz"]                    # tasks evaluated but never trained (`train: false`)
}
```

`baseline_shots`, `shots` and `retention` are absent from files written before they existed (read as 0,
null and []). `shots.<task>.truncated` counts its k-shot prompts cut to `data.max_seq_len`.

`before` / `after` map task -> metric -> number (null where not finite). Metric names per kind are in
`eval/best.py:metric_names`; `rows` and `gen_rows` are the numbers of rows evaluated and generated.
`before.<task>.rows` can be smaller than `after.<task>.rows`: the baseline of `multitune train` evaluates at
most `eval.baseline_max_rows` rows (`report/table.py:baseline_note` says so wherever the two are compared).

`eval/<task>/predictions.jsonl`: one JSON object per evaluated row, in evaluation order, with at least
`row` (the source row), `input` (the row's last user turn), `gold`, `prediction`, `score`, `correct`.
Closed tasks: `score` is the prediction's log-likelihood; `gold_score` and `answer_tokens` that of the
gold answer; with generation `generated` (the raw answer), `generated_label` (parsed, null when it names
no valid label) and `generated_correct`; with `eval.choice_texts`, `choice_scores`, `choice_chars`,
`gold_index`. Generation tasks: `prediction` is the greedy answer (null when not generated), `score`
its ROUGE-L F1, `correct` an exact match; `loss` the reference's loss per token.

`eval/<task>/details.json` (classification): `labels`, `per_class` (precision, recall, f1, support),
`confusion` (rows gold, columns predicted, in label order), `most_confused`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multitune.errors import UserError
from multitune.io import read_json, read_jsonl, write_json_atomic, write_text_atomic

FORMAT = 2


@dataclass(frozen=True)
class Summary:
    """The contents of `eval/metrics.json`."""

    after: dict[str, dict[str, float | None]]
    before: dict[str, dict[str, float | None]] | None = None
    primary: dict[str, str] | None = None
    best: dict[str, Any] | None = None
    final_step: int | None = None
    model: str = "trained"
    shots: dict[str, dict[str, float | None]] | None = None
    """The untrained model with `shots_k` training examples in each prompt (`eval.baseline_shots`)."""
    shots_k: int = 0
    retention: tuple[str, ...] = ()
    """Tasks evaluated before and after but never trained: their change is what training cost them."""

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "final_step": self.final_step, "model": self.model, "primary": self.primary,
                "best": self.best, "before": _finite(self.before), "after": _finite(self.after),
                "baseline_shots": self.shots_k, "shots": _finite(self.shots), "retention": list(self.retention)}


def load_summary(run_dir: str | Path, eval_dir: str = "eval") -> Summary:
    """Per-task metrics before and after training from a run's `eval/metrics.json`."""
    path = Path(run_dir) / eval_dir / "metrics.json"
    if not path.is_file():
        raise UserError(f"no evaluation results: {path} is missing",
                        fix="evaluate the run first (`multitune train` or `multitune eval`)")
    raw = read_json(path)  # DamagedFile when it is cut short
    return Summary(after=raw["after"], before=raw.get("before"), primary=raw.get("primary"), best=raw.get("best"),
                   final_step=raw.get("final_step"), model=raw.get("model", "trained"), shots=raw.get("shots"),
                   shots_k=int(raw.get("baseline_shots") or 0), retention=tuple(raw.get("retention") or ()))


def write_results(eval_dir: Path, summary: Summary, results: Mapping[str, Any]) -> None:
    """Write metrics.json and each task's predictions.jsonl (and details.json) under `eval_dir`.

    `results` maps task -> `eval.runner.TaskResult`.
    """
    write_json_atomic(eval_dir / "metrics.json", summary.to_json())
    for task, result in results.items():
        lines = "".join(json.dumps(_finite(p), ensure_ascii=False) + "\n" for p in result.predictions)
        write_text_atomic(eval_dir / task / "predictions.jsonl", lines)
        if result.details:
            write_json_atomic(eval_dir / task / "details.json", result.details)


def load_predictions(run_dir: str | Path, task: str, eval_dir: str = "eval") -> list[dict[str, Any]]:
    path = Path(run_dir) / eval_dir / task / "predictions.jsonl"
    return read_jsonl(path) if path.is_file() else []


def load_details(run_dir: str | Path, task: str, eval_dir: str = "eval") -> dict[str, Any]:
    path = Path(run_dir) / eval_dir / task / "details.json"
    return read_json(path) if path.is_file() else {}


def _finite(obj: Any) -> Any:
    """JSON has no NaN or Infinity: write null instead, so every file stays valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
