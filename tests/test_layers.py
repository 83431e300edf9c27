"""The house rules a reader relies on: imports go down the floors only (DESIGN.md, "Layers"), and what
depends on a task's kind reads the one registry of kinds (`multitune.tasks.KINDS`) instead of comparing
names."""

from __future__ import annotations

import ast
from pathlib import Path

import multitune

PACKAGE = Path(multitune.__file__).parent
# Lowest first. A module may import its own floor and the floors below; `train` and `eval` share a floor
# but stay apart (SIBLINGS), so evaluation never depends on training code.
FLOORS: list[set[str]] = [
    {"errors", "io", "runtime", "section", "__init__"},  # runtime: CPU thread settings, read before torch starts
    {"tasks"},  # one class per task kind (its config section, rows -> messages, answers, metrics) and their registry
    {"kinds", "best", "stall"},  # the metric rules read from the kinds, the best-metric rule, the stalled-task warning
    {"config"},  # the run config, gathering the kinds' sections
    {"data"},
    {"models", "loss", "tracking", "plan"},  # token-loss maths, trackers (shared by train and eval), the estimator
    {"train", "eval"},
    {"report", "export", "serve"},
    {"recipes"},  # one module per verb: the orchestration of one whole command
    {"cli", "__main__", "launch"},  # launch: torchrun / accelerate launch with a status schedulers requeue on
]
SIBLINGS = {frozenset({"train", "eval"})}
# The report is built from the files a run wrote (eval/metrics.json, metrics.jsonl), never from the code
# that computed them: what it needs about metrics is in `kinds`.
APART = {"report": {"train", "eval"}}
# Where a kind's name may be compared: its own module (the kinds and their registry).
KIND_TABLE_FILES = {"tasks/"}


def unit(module: str) -> str:
    """The top-level piece a module belongs to: multitune.train.loop -> train."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def floor_of(module: str) -> int:
    name = unit(module)
    for i, floor in enumerate(FLOORS):
        if name in floor:
            return i
    raise AssertionError(f"{module} is on no floor: add `{name}` to FLOORS in tests/test_layers.py "
                         "(and to DESIGN.md's layers)")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1 and parts[:-1] != ["multitune"]:
        parts = parts[:-1]
    return ".".join(parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module) of every multitune import in the file, inside functions too; `from a import b`
    counts as importing `a.b` when `a.b` is a module."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("multitune")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(pkg + ([base] if base else []))
            if not base.startswith("multitune"):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                is_module = (PACKAGE.parent / (sub.replace(".", "/") + ".py")).is_file() or \
                    (PACKAGE.parent / sub.replace(".", "/")).is_dir()
                out.append((node.lineno, sub if is_module else base))
    return out


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_imports_a_higher_floor():
    problems = []
    for path in sources():
        module = module_name(path)
        low = floor_of(module)
        for line, target in imported(ast.parse(path.read_text()), module, path.name == "__init__.py"):
            if target == "multitune":
                continue
            mine, theirs, where = unit(module), unit(target), f"{path.relative_to(PACKAGE)}:{line}"
            if floor_of(target) > low:
                problems.append(f"{where} imports {target} (floor {floor_of(target)} above {low})")
            elif mine != theirs and (frozenset({mine, theirs}) in SIBLINGS or theirs in APART.get(mine, ())):
                problems.append(f"{where} imports {target}, which it must stay apart from")
    assert not problems, "imports go down only:\n" + "\n".join(problems)


def test_the_floor_check_sees_imports_inside_functions():
    tree = ast.parse("def f():\n    from multitune.recipes.train import run\n")
    assert imported(tree, "multitune.data.prepare", False) == [(2, "multitune.recipes.train")]
    assert floor_of("multitune.recipes.train") > floor_of("multitune.data.prepare")


def kind_comparisons(tree: ast.AST, kind_names: set[str]) -> list[int]:
    """Lines that compare something with a task kind's name (`kind == "classification"`,
    `kind in ("classification", "multiple_choice")`)."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        for side in [node.left, *node.comparators]:
            elements = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
            if any(isinstance(e, ast.Constant) and e.value in kind_names for e in elements):
                lines.append(node.lineno)
                break
    return lines


def test_no_kind_name_checks_outside_the_kind_table_and_the_task_modules():
    from multitune.tasks import KINDS

    names = set(KINDS)
    found = []
    for path in sources():
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in KIND_TABLE_FILES or any(rel.startswith(d) for d in KIND_TABLE_FILES if d.endswith("/")):
            continue
        found += [f"{rel}:{line}" for line in kind_comparisons(ast.parse(path.read_text()), names)]
    assert not found, "read the kind's class (multitune.tasks.kind) instead of comparing kind names:\n" + \
        "\n".join(found)


def test_the_kind_check_finds_both_forms():
    tree = ast.parse('a = k == "classification"\nb = k not in ("multiple_choice", "x")\nc = k == "base"\n')
    assert kind_comparisons(tree, {"classification", "multiple_choice"}) == [1, 2]


def test_every_kind_module_is_registered_once_under_its_config_name():
    """The registry is the only list of kinds: each kind module's class is in it, under the name its config
    section admits, and nothing else is."""
    from typing import get_args

    from multitune.tasks import BUILT_IN, KINDS

    # every module of tasks/ but the pieces the kinds share is a kind
    modules = {p.stem for p in (PACKAGE / "tasks").glob("*.py")} - {"__init__", "base", "config", "answers"}
    assert {type(k).__module__.rsplit(".", 1)[-1] for k in BUILT_IN} == modules
    assert [k.name for k in BUILT_IN] == list(KINDS)[: len(BUILT_IN)]
    for name, spec in KINDS.items():
        assert get_args(spec.config.model_fields["kind"].annotation) == (name,)
