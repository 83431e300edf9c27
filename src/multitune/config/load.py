"""YAML + `dotted.key=value` overrides -> a validated `RunConfig`, or one `UserError` listing every problem."""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from multitune.config.schema import RunConfig
from multitune.config.tasks import MISSING_KIND, UNKNOWN_KIND
from multitune.errors import UserError
from multitune.tasks import KINDS


class TypedLoader(yaml.SafeLoader):
    """YAML as the user typed it: only `true` and `false` are booleans, as in YAML 1.2.

    PyYAML follows YAML 1.1, which also reads `yes`, `no`, `on` and `off` as booleans, so
    `train.mixed_precision: no` (the documented default, and accelerate's spelling) arrived as False and was
    refused, and a label `no` became False. Read as text, such a value stays what the user typed where the
    schema expects text, and where it expects a boolean pydantic still reads yes/no/on/off as one.
    """


TypedLoader.yaml_implicit_resolvers = {  # a copy: SafeLoader's own table is left as it is
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
TypedLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))


def read_yaml_text(text: str) -> Any:
    """Parse YAML text with `TypedLoader` (yes/no/on/off stay text)."""
    return yaml.load(text, Loader=TypedLoader)  # a SafeLoader: it constructs plain data only


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read `path`, apply `overrides` (`train.learning_rate=1e-4`, `tasks.claims.weight=2`), validate.

    Raises `UserError` naming the file, every bad key (with a did-you-mean hint) and every bad value.
    """
    raw = read_yaml(path)
    raw = apply_overrides(raw, overrides)
    return validate(raw, origin=str(path))


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"config file not found: {path}",
            fix="pass the path of a run config, e.g. `multitune train configs/quickstart.yaml`",
        )
    try:
        raw = read_yaml_text(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"not valid YAML: {getattr(e, 'problem', e)}", where=where) from None
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", where=str(path), fix="save the config as UTF-8") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"the top level must be a mapping of sections, not {type(raw).__name__}", where=str(path))
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of `raw` with each `a.b.c=value` set; `value` is parsed as YAML (`true`, `[a, b]`,
    `null`; `no` stays text, as in a config file). In `tasks.<name>.<key>`, `<name>` selects the task with that name."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not of the form key=value", fix="e.g. train.learning_rate=1e-4")
        _set_dotted(raw, key.strip().split("."), _parse_value(text), item)
    return raw


def _parse_value(text: str) -> Any:
    try:
        return read_yaml_text(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _set_dotted(raw: dict[str, Any], parts: list[str], value: Any, item: str) -> None:
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):  # only `tasks` is a list: address its entries by name
            node = _task_by_name(node, part, item)
            continue
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict | list):
            raise UserError(f"override {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = nxt
    if isinstance(node, list):
        raise UserError(f"override {item!r}: set a key of one task, e.g. tasks.<name>.source=...")
    node[parts[-1]] = value


def _task_by_name(tasks: list[Any], name: str, item: str) -> dict[str, Any]:
    for t in tasks:
        if isinstance(t, dict) and t.get("name") == name:
            return t
    names = [t.get("name") for t in tasks if isinstance(t, dict)]
    hint = difflib.get_close_matches(name, [n for n in names if isinstance(n, str)], n=1)
    raise UserError(
        f"override {item!r}: no task named {name!r}",
        fix=(f"did you mean {hint[0]!r}? " if hint else "") + f"tasks in this config: {', '.join(map(str, names))}",
    )


def validate(raw: dict[str, Any], origin: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        problems = [_describe(err, raw) for err in e.errors()]
        noun = "problem" if len(problems) == 1 else "problems"
        raise UserError(
            f"{len(problems)} {noun} in the config:\n" + "\n".join(f"  - {p}" for p in problems),
            where=origin,
        ) from None


def _describe(err: dict[str, Any], raw: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    path = _readable_path(loc, raw)
    if err["type"] == "extra_forbidden":
        known = _known_keys(loc[:-1], raw)
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        suggestion = f"did you mean {hint[0]!r}?" if hint else f"known keys: {', '.join(known)}"
        return f"{path}: unknown key ({suggestion})"
    if err["type"] == "missing":
        return f"{path}: required key is missing"
    if err["type"] == UNKNOWN_KIND:
        return f"{path}.kind: unknown task kind {err['ctx']['kind']!r} (one of {err['ctx']['kinds']})"
    if err["type"] == MISSING_KIND:
        return f"{path}: missing `kind` (one of {', '.join(KINDS)})"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
    return f"{path}: {msg}{shown}"


def _readable_path(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    """('tasks', 0, 'classification', 'labl') -> 'tasks[claims].labl', naming the task as the user did."""
    if loc[:1] != ("tasks",) or len(loc) < 2 or not isinstance(loc[1], int):
        return ".".join(map(str, loc)) or "(top level)"
    tasks = raw.get("tasks")
    item = tasks[loc[1]] if isinstance(tasks, list) and loc[1] < len(tasks) else None
    name = item.get("name") if isinstance(item, dict) else None
    head = f"tasks[{name}]" if name else f"tasks[{loc[1]}]"
    return ".".join([head, *map(str, loc[2:])])


def _known_keys(loc: tuple[Any, ...], raw: dict[str, Any]) -> list[str]:
    """The field names of the section at `loc`, for did-you-mean hints (a task's: its kind's section)."""
    if loc[:1] == ("tasks",):
        tasks = raw.get("tasks")
        item = tasks[loc[1]] if len(loc) > 1 and isinstance(tasks, list) and loc[1] < len(tasks) else None
        kind = item.get("kind") if isinstance(item, dict) else None
        spec = KINDS.get(kind) if isinstance(kind, str) else None
        return list(spec.config.model_fields) if spec is not None else []
    model: Any = RunConfig
    for part in loc:
        field = model.model_fields.get(part) if _is_section(model) else None
        if field is None:
            return []
        model = next((a for a in (field.annotation, *get_args(field.annotation)) if _is_section(a)), None)
    return list(model.model_fields) if _is_section(model) else []


def _is_section(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def dump(cfg: RunConfig) -> str:
    """The resolved config (every default filled in) as YAML text."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def save(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from multitune.io import write_text_atomic

    write_text_atomic(Path(path), dump(cfg))
