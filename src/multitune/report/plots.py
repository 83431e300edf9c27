"""matplotlib figures of a run: loss curves, per-task metric curves, confusion matrices.

Each function takes plain data (rows of `metrics.jsonl`, a confusion matrix) and returns PNG bytes, or
None when there is nothing to draw. The Agg backend is used, so no display is ever needed.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from multitune.kinds import COUNTS

# Metrics drawn on a 0-1 axis; sacrebleu's 0-100 scores are divided by 100 to share it.
PERCENT_SCALE = ("bleu", "chrf")
NOT_CURVES = COUNTS | {"loss", "perplexity", "gen_invalid_rate"}
ANNOTATE_UP_TO = 20  # confusion matrices with at most this many labels print their counts in the cells


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over the rows that have a finite value for it."""
    pairs = [(int(r["step"]), float(r[key])) for r in rows if isinstance(r.get(key), int | float)]
    return [s for s, _ in pairs], [v for _, v in pairs]


def eval_keys(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """task -> metric names found in `eval/<task>/<metric>` keys, in first-seen order."""
    out: dict[str, list[str]] = {}
    for r in rows:
        for key in r:
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "eval" and parts[2] not in out.setdefault(parts[1], []):
                out[parts[1]].append(parts[2])
    return out


def loss_curves(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Training loss (all tasks) and each task's validation loss against optimizer steps."""
    steps, train = series(rows, "train/loss")
    tasks = [t for t, metrics in eval_keys(rows).items() if "loss" in metrics]
    if not steps and not tasks:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if steps:
        ax.plot(steps, train, color="black", linewidth=1.5, label="train (all tasks)")
    for task in tasks:
        s, v = series(rows, f"eval/{task}/loss")
        ax.plot(s, v, marker="o", linewidth=1, label=f"validation: {task}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per answer token")
    ax.set_yscale("log")
    ax.set_title("Training and validation loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def metric_curves(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """One panel per task: its quality metrics at every evaluation (generated ones where computed)."""
    tasks = {t: [m for m in ms if m not in NOT_CURVES] for t, ms in eval_keys(rows).items()}
    tasks = {t: ms for t, ms in tasks.items() if ms}
    if not tasks:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, (task, metrics) in zip(axes[0], tasks.items(), strict=True):
        for metric in metrics:
            s, v = series(rows, f"eval/{task}/{metric}")
            scale = 100.0 if metric in PERCENT_SCALE else 1.0
            ax.plot(s, [x / scale for x in v], marker="o", linewidth=1,
                    label=f"{metric}/100" if scale != 1.0 else metric)
        ax.set_title(task)
        ax.set_xlabel("optimizer step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Validation metrics per task (step 0: the untrained model)")
    return _png(fig)


def confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> bytes:
    """Rows normalised to recall (so small classes are as visible as large ones), every label named;
    the figure grows with the number of labels so 77 stay legible."""
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(matrix, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    n = len(labels)
    side = max(4.5, 0.2 * n + 3)
    font = 8 if n <= 30 else 7
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(n), labels=list(labels), rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels=list(labels), fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    if n <= ANNOTATE_UP_TO:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=font,
                            color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the gold label's rows")
    return _png(fig)


def sweep_bars(runs: Sequence[str], groups: Sequence[str], values: Sequence[Sequence[float | None]]) -> bytes:
    """Grouped bars of a sweep: one group per task (`groups`), one bar per run; `values[run][group]`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(runs) * len(groups) + 2), 4))
    width = 0.8 / len(runs)
    for i, (run, row) in enumerate(zip(runs, values, strict=True)):
        xs = [g + (i - (len(runs) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [v or 0.0 for v in row], width, label=run)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_title("primary metric after training, per run")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def task_curve(rows: Sequence[Mapping[str, Any]], task: str, metric: str,
               baselines: Sequence[tuple[str, float | None]] = ()) -> bytes | None:
    """One task's own curves against optimizer steps: its primary `metric` on the validation rows (left
    axis, with each `(label, value)` of `baselines` as a flat line: zero-shot, k-shot), and its validation
    and training losses (right axis, log scale). None when the run logged neither for this task."""
    ms, mv = series(rows, f"eval/{task}/{metric}")
    vs, vv = series(rows, f"eval/{task}/loss")
    ts, tv = series(rows, f"train/{task}/loss")
    if not (ms or vs or ts):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    scale = 100.0 if metric in PERCENT_SCALE else 1.0
    if ms:
        ax.plot(ms, [v / scale for v in mv], marker="o", color="tab:blue", label=f"validation {metric}")
    for (label, value), style in zip(baselines, ("--", ":", "-."), strict=False):
        if value is not None:
            ax.axhline(value / scale, color="tab:gray", linestyle=style, linewidth=1, label=f"{label} {metric}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    loss_ax = ax.twinx()
    if ts:
        loss_ax.plot(ts, tv, color="tab:orange", linewidth=1, alpha=0.8, label="training loss (this task)")
    if vs:
        loss_ax.plot(vs, vv, color="tab:red", marker="s", linewidth=1, label="validation loss")
    loss_ax.set_ylabel("loss per answer token")
    loss_ax.set_yscale("log")
    handles = [h for a in (ax, loss_ax) for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles, [str(h.get_label()) for h in handles], fontsize=7, loc="center right")
    ax.set_title(f"{task}: its validation {metric} and its losses")
    return _png(fig)
