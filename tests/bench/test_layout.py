"""bench/ as a package (issue 25): ordinary imports only, and bench/README.md's table names what exists and runs."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from bench.common import child_env
from conftest import REPO

BENCH = REPO / "bench"
# a `sys.path` edit, or an import from tests/ (`from export.finished import ...` came through one)
FORBIDDEN = re.compile(r"sys\.path|^\s*(from|import)\s+(tests|conftest)\b", re.MULTILINE)


def table_scripts() -> list[tuple[str, str]]:
    """(script, command) of every row of the README's script table."""
    text = (BENCH / "README.md").read_text()
    table = text.split("## The scripts", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| [^|]+ \| `([^`]+)`", table, re.MULTILINE)
    assert len(rows) >= 15, rows
    return rows


def test_no_path_edits_and_no_imports_from_tests():
    offenders = [str(p.relative_to(REPO)) for p in BENCH.rglob("*") if p.suffix in (".py", ".sh")
                 and FORBIDDEN.search(p.read_text())]
    assert offenders == []


def test_every_package_folder_has_its_init():
    folders = {p.parent for p in BENCH.rglob("*.py")}
    assert sorted(str(f.relative_to(REPO)) for f in folders if not (f / "__init__.py").is_file()) == []


def test_every_table_row_exists_and_its_command_runs_it():
    for script, command in table_scripts():
        if script.endswith(".sh"):
            assert (REPO / script).is_file(), script
            assert command.startswith(f"bash {script}"), (script, command)
        else:
            assert importlib.util.find_spec(script) is not None, script
            assert re.match(rf"^(\w+=\S+ )*python -m {re.escape(script)}( |$)", command), (script, command)


def test_every_runnable_module_has_a_row_or_is_a_listed_helper():
    """A script added to bench/ without a README row fails here (helpers have `__main__` only when run by one)."""
    readme = (BENCH / "README.md").read_text()
    runnable = {".".join(p.relative_to(REPO).with_suffix("").parts) for p in BENCH.rglob("*.py")
                if 'if __name__ == "__main__"' in p.read_text()}
    assert sorted(m for m in runnable if f"`{m}`" not in readme) == []


@pytest.mark.parametrize("module", ["bench.plan.estimate", "bench.quality.multitask", "bench.eval.scoring"])
def test_help_exits_zero(module):
    """`--help` of three entry points as the README runs them (from the root, no PYTHONPATH edit of ours)."""
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_common_helpers():
    import doctest

    from bench import common

    assert doctest.testmod(common).failed == 0
    env = common.child_env(3, src=REPO / "elsewhere", OMP_WAIT_POLICY="ACTIVE")
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env["OMP_WAIT_POLICY"]) == ("3", "3", "ACTIVE")
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO / "elsewhere")
    calls: list[int] = []
    timed = common.warm_then_time(lambda i: calls.append(i) or 10 * i, repeats=2, warmup=1)
    assert calls == [0, 1, 2] and timed.results == [10, 20] and len(timed.seconds) == 2
    with common.stopwatch() as clock:
        pass
    assert clock.seconds >= 0 and clock.load_after >= 0
