"""The README shows what `make quickstart` prints: its before/after table comes from a real quickstart run,
and this test runs the quickstart config as it ships and compares the two."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from multitune import config
from multitune.report.table import before_after

REPO = Path(__file__).resolve().parents[1]


def readme_table() -> dict[tuple[str, str], tuple[float, float]]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"ends with a before/after table.*?```\n(task\s+metric.*?)```", text, re.S)
    assert block, "README.md lost its quickstart table"
    return parse(block.group(1))


def parse(table: str) -> dict[tuple[str, str], tuple[float, float]]:
    out = {}
    for line in table.strip().splitlines()[1:]:
        task, metric, before, after, _ = line.split()
        out[(task, metric)] = (float(before), float(after))
    return out


def close(a: float, b: float) -> bool:
    """Equal as printed on another machine of the same kind: scores to 0.02, losses and perplexities to 3%
    (float sums differ with thread counts; a different result, such as 0.95 against 0.87, is not close)."""
    return math.isclose(a, b, abs_tol=0.02) if max(abs(a), abs(b)) <= 1 else math.isclose(a, b, rel_tol=0.03)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    from multitune.train.recipe import run

    out = tmp_path_factory.mktemp("readme") / "quickstart"
    return run(config.load(REPO / "configs" / "quickstart.yaml", [f"output_dir={out}"]))


def test_the_readme_table_is_what_the_quickstart_prints(quickstart):
    printed = parse(before_after(quickstart.metrics["before"], quickstart.metrics["after"]))
    shown = readme_table()
    assert printed.keys() == shown.keys()
    drift = {k: (shown[k], printed[k]) for k in shown
             if not (close(shown[k][0], printed[k][0]) and close(shown[k][1], printed[k][1]))}
    assert not drift, f"README (before, after) vs this run: {drift}; paste the table `make quickstart` prints"


def test_close_tells_drift_from_noise():
    assert close(0.9500, 0.9450) and close(7.4973, 7.52)
    assert not close(0.9500, 0.8667) and not close(15.4969, 17.0)
