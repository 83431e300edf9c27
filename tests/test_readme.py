"""The README shows what `make quickstart` prints: its before/after table comes from a real quickstart run,
and this test runs the quickstart config as it ships and compares the two.

The table must read the same on every CPU, so each row is compared within how far it was measured to move
with the CPU's rounding (`bench/quality/quickstart_spread.py`: 8 kernel and thread settings, docs/benchmarks.md
"The quickstart on every CPU"), and no further: a real change that moves a closed task's accuracy by 0.05
fails here on every machine.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from multitune import config
from multitune.kinds import kind
from multitune.report.table import before_after

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"

# Scores of the closed tasks (accuracy, F1, gen_*), before and after: the same to 4 decimals under every
# setting measured. Allowed: one validation row of the smallest evaluated set (claims' 80 rows; intents
# has 120, quiz 99, generation 100), so one flipped row passes and two (or a move of 0.05) fail.
ONE_ROW = 0.013
# Losses and perplexity of the untrained model: the same to 4 decimals everywhere (a 1e-7 relative wobble).
UNTRAINED_REL = 1e-3
# Losses of the tuned closed tasks: measured 0.0007-0.0009, 0.0037-0.0131 and 0.0015-0.0018; twice the
# widest spread. A tuned closed task that lost rows has losses of 0.05 and more.
TUNED_CLOSED_LOSS = 0.02
# The open `instruct` task after training is indicative (the README says so): its greedy answers change
# with the rounding. Measured ranges: loss 2.29-2.37, perplexity 9.8-10.7, rouge1/rougeL 0.12-0.30,
# chrF 8.0-17.3, rouge2 and BLEU 0. Allowed: about twice those ranges, as absolute differences.
INDICATIVE = {"loss": 0.2, "perplexity": 2.0, "rouge1": 0.35, "rouge2": 0.1, "rougeL": 0.35, "bleu": 5.0, "chrf": 15.0}


def readme_table() -> dict[tuple[str, str], tuple[float, float]]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"ends with a before/after table.*?```\n(task\s+metric.*?)```", text, re.S)
    assert block, "README.md lost its quickstart table"
    return parse(block.group(1))


def parse(table: str) -> dict[tuple[str, str], tuple[float, float]]:
    out = {}
    for line in table.strip().splitlines()[1:]:
        if not line.strip():
            break  # a note under the table
        task, metric, before, after, _ = line.split()
        out[(task, metric)] = (float(before), float(after))
    return out


def allowed(kind_name: str, metric: str, when: str) -> tuple[float, float]:
    """(absolute, relative) difference a row of this task kind may show between CPUs."""
    if not kind(kind_name).closed and when == "after":
        return INDICATIVE[metric], 0.0
    if metric in ("loss", "perplexity"):
        return (0.0, UNTRAINED_REL) if when == "before" else (TUNED_CLOSED_LOSS, 0.0)
    return ONE_ROW, 0.0


def close(shown: float, printed: float, tolerance: tuple[float, float]) -> bool:
    absolute, relative = tolerance
    return math.isclose(shown, printed, abs_tol=absolute, rel_tol=relative)


def drift(shown: dict, printed: dict, kinds: dict[str, str]) -> dict:
    """The rows whose before or after moved further than they may: (task, metric) -> (shown, printed)."""
    out = {}
    for (task, metric), (before, after) in shown.items():
        got = printed[(task, metric)]
        if not (close(before, got[0], allowed(kinds[task], metric, "before"))
                and close(after, got[1], allowed(kinds[task], metric, "after"))):
            out[(task, metric)] = ((before, after), got)
    return out


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    from multitune.recipes.train import run

    out = tmp_path_factory.mktemp("readme") / "quickstart"
    return run(config.load(QUICKSTART, [f"output_dir={out}"]))


def quickstart_kinds() -> dict[str, str]:
    return {t.name: t.kind for t in config.load(QUICKSTART).tasks}


def test_the_readme_table_is_what_the_quickstart_prints(quickstart):
    printed = parse(before_after(quickstart.metrics["before"], quickstart.metrics["after"]))
    shown = readme_table()
    assert printed.keys() == shown.keys()
    moved = drift(shown, printed, quickstart_kinds())
    assert not moved, f"README (before, after) vs this run: {moved}; paste the table `make quickstart` prints"


def test_the_tolerances_pass_rounding_and_fail_a_real_change():
    kinds = quickstart_kinds()
    shown = readme_table()
    # What another CPU printed (measured): another tuned intents loss, other instruct answers.
    rounding = dict(shown)
    rounding[("intents", "loss")] = (shown[("intents", "loss")][0] * (1 + 1e-7), 0.0131)
    rounding[("instruct", "chrf")] = (shown[("instruct", "chrf")][0], 8.0320)
    rounding[("instruct", "rougeL")] = (shown[("instruct", "rougeL")][0], 0.1215)
    assert not drift(shown, rounding, kinds)
    # One validation row of intents (1/120) may flip; a move of 0.05 may not, nor a doubled untrained loss.
    before, after = shown[("intents", "accuracy")]
    assert not drift(shown, {**shown, ("intents", "accuracy"): (before, after - 1 / 120)}, kinds)
    for changed in [(before, after - 0.05), (before + 0.05, after)]:
        assert drift(shown, {**shown, ("intents", "accuracy"): changed}, kinds)
    for task, metric in [("intents", "gen_accuracy"), ("quiz", "accuracy"), ("claims", "macro_f1")]:
        b, a = shown[(task, metric)]
        assert drift(shown, {**shown, (task, metric): (b, a - 0.05)}, kinds), (task, metric)
    b, a = shown[("claims", "loss")]
    assert drift(shown, {**shown, ("claims", "loss"): (b * 1.01, a)}, kinds)
    assert drift(shown, {**shown, ("claims", "loss"): (b, a + 0.05)}, kinds)
