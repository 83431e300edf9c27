"""The data summary a user reads before training: per task, what was read, kept, dropped and mixed."""

from __future__ import annotations

from typing import Any

from multitune.data.prepare import Prepared


def data_summary(prepared: Prepared, seed: int) -> str:
    """One line per task (rows, split, epoch share and tokens, what was dropped and why), and the packing
    when it is on. The same numbers are in `data_stats.json`."""
    lines = ["data:"]
    for name, s in prepared.stats.items():
        tr, va, ep = s["train"], s["val"], s["epoch"]
        lines.append(
            f"  {name:<16} {s['kind']:<15} rows {s['rows']:>6}  train {tr['examples']:>6}  val {va['examples']:>5}"
            f"  epoch {ep['examples']:>6} ({ep['share']:>6.1%}, {ep['tokens']:>9,} tokens,"
            f" {ep['answer_tokens']:,} trained)"
        )
        notes = _notes(s)
        if notes:
            lines.append(f"  {'':<16} {'; '.join(notes)}")
    cached = [name for name, s in prepared.stats.items() if s["tokenize_cache"] == "hit"]
    if cached:
        lines.append(f"  tokens read from the cache for: {', '.join(cached)}")
    if prepared.pack_len is not None:
        lines.append(packing_summary(prepared, seed))
    return "\n".join(lines)


def _notes(s: dict[str, Any]) -> list[str]:
    """What happened to rows that are not trained as they are, and where validation comes from."""
    notes = []
    if not s.get("trained", True):
        notes.append("evaluated only (train: false): never trained, no share of the mixture (retention)")
    if s["empty_rows_dropped"]:
        notes.append(f"dropped {s['empty_rows_dropped']} rows with an empty text")
    for side in ("train", "val"):
        t = s[side]
        if t["truncated"]:
            notes.append(f"{side}: truncated {t['truncated']} prompts")
        if t["dropped_too_long"]:
            notes.append(f"{side}: dropped {t['dropped_too_long']} too long")
        if t["dropped_no_answer"]:
            notes.append(f"{side}: dropped {t['dropped_no_answer']} with no answer token")
    if s["validation"].startswith("split"):
        notes.append(f"validation from {s['validation']}")
    return notes


def packing_summary(prepared: Prepared, seed: int) -> str:
    """Epoch 0 packed: how many rows, how full (padding inside micro-batches comes on top, a few %)."""
    from multitune.data.packing import epoch_rows

    assert prepared.pack_len is not None and prepared.epoch_counts is not None
    rows = epoch_rows(tuple(prepared.task_sizes), tuple(prepared.epoch_counts), prepared.lengths,
                      prepared.pack_len, seed, 0)
    examples = sum(len(r) for r in rows)
    tokens = sum(prepared.lengths[i] for r in rows for i in r)
    return (f"  packing: {examples:,} examples in {len(rows):,} rows of up to {prepared.pack_len} tokens, "
            f"{tokens / (len(rows) * prepared.pack_len):.1%} full")
