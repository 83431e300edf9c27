"""The arithmetic and the table of `bench/eval/smollm2.py`: raw counts and seconds in, rates and the shares
of the limits out (`bench/eval/counts.py` defines the limits)."""

from __future__ import annotations

from typing import Any

from bench.eval.counts import (
    Calls,
    Params,
    flop_fraction,
    needed_flops,
    roofline_seconds,
    weight_read_seconds,
)

KEY = ("task", "model", "method", "dtype")


def derive(row: dict, machine: dict, needed_from: list[dict] | None = None) -> dict:
    """`row` with its rates and limits. The needed positions come from the row's own `work` (counted by
    the evaluation), else from the row of `needed_from` with the same key (an older tree's row: the same
    rows and model need the same positions whatever the code)."""
    if "error" in row:
        return row
    out = dict(row)
    n, seconds, p = row["rows"], row["seconds"], Params(**row["params"])
    peak, bandwidth = machine["peak_gflops"][row["dtype"]], machine["read_bandwidth_gbs"]
    out["rows_per_s"] = n / seconds
    for key in ("forwards", "positions", "padding", "logit_positions"):
        out[f"{key}_per_row"] = row[key] / n
    work = row.get("work") or next((r.get("work") for r in needed_from or [] if _key(r) == _key(row)), None)
    if work and work.get("needed_positions"):
        flops = needed_flops(work["needed_positions"], work["needed_logits"], p)
        out |= {"needed_per_row": work["needed_positions"] / n, "needed_logits_per_row": work["needed_logits"] / n,
                "limit_s": flops / (peak * 1e9), "flop_fraction": flop_fraction(flops, peak, seconds)}
    if row.get("work") and row["work"]["attention_pairs"]:
        out["attention_padding_share"] = 1 - row["work"]["attention_needed"] / row["work"]["attention_pairs"]
    if row["method"] == "greedy":
        bound = weight_read_seconds(row["forwards"], p.weight_bytes, bandwidth)
        roof = roofline_seconds(Calls(**row["calls"]), p, peak, bandwidth)
        out |= {"weight_read_s": bound, "weight_read_ratio": seconds / bound, "roofline_s": roof,
                "roofline_ratio": seconds / roof}
    return out


def _key(row: dict) -> tuple:
    return tuple(row.get(k) for k in KEY)


def _f(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


COLUMNS = [  # (header, field, format)
    ("rows/s", "rows_per_s", ".2f"), ("metric", "value", ".3f"), ("forwards/row", "forwards_per_row", ".2f"),
    ("positions/row", "positions_per_row", ".1f"), ("padding/row", "padding_per_row", ".1f"),
    ("FLOP-limit fraction", "flop_fraction", ".3f"), ("weight-read ratio", "weight_read_ratio", ".2f"),
]


def table(report: dict) -> str:
    """A line on the machine, then one markdown row per (task, model, method, dtype), with the older
    tree's columns after this tree's when there is one."""
    m = report["machine"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["flags"].items())
    peaks = ", ".join(f"{d} {v:.0f} GFLOP/s" for d, v in m["peak_gflops"].items())
    lines = [f"{m['cpu']}, {m['threads']} threads, torch {m['torch']}; {flags}; matmul peak {peaks}; "
             f"read bandwidth {m['read_bandwidth_gbs']:.1f} GB/s", ""]
    old = {_key(r): r for r in report.get("before") or [] if "error" not in r}
    errors = [r for r in report.get("before") or [] if "error" in r]
    head = ["task", "model", "method", "dtype", "rows", "needed/row"] + [c[0] for c in COLUMNS]
    if report.get("before_tree"):
        head += [f"{c[0]} (before)" for c in COLUMNS]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        cells = [r["task"], r["model"], r["method"], r["dtype"], str(r["rows"]), _f(r.get("needed_per_row"), ".1f")]
        cells += [_f(r.get(f), fmt) for _, f, fmt in COLUMNS]
        if report.get("before_tree"):
            b = old.get(_key(r), {})
            cells += [_f(b.get(f), fmt) for _, f, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"\nbefore ({report['before_tree']}) could not evaluate {e['task']}: {e['error']}" for e in errors]
    lines.append("\nmetric: accuracy (ROUGE-L for dialogsum); needed/row: positions an exact method computes; "
                 "weight-read ratio: seconds over forwards x weight bytes / bandwidth (greedy)")
    return "\n".join(lines)
