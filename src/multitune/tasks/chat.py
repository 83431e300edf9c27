"""Chat: whole conversations, every assistant turn trained.

A row holds a list of turns, either `{role, content}` (the OpenAI / Hugging Face layout, roles system /
user / assistant) or `{from, value}` (ShareGPT `conversations`, roles system / human / gpt). Turns after
the last assistant turn teach nothing and are left out, so an example always ends with an answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from multitune.errors import UserError
from multitune.tasks.base import (
    EmptyPolicy,
    EmptyText,
    Example,
    Message,
    OpenKind,
    Rendered,
    check_template,
    column,
    render_rows,
    require_columns,
    text_cell,
)
from multitune.tasks.config import TaskBase

DEFAULT_SYSTEM = None  # conversations bring their own system turn, if any
DEFAULT_TEMPLATE = "{content}"
FIELDS = ("content",)
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}


class ChatTask(TaskBase):
    """Template field: `{content}`, applied to every user turn. Every assistant turn is trained."""

    kind: Literal["chat"]
    messages_column: str = "messages"
    """A list of turns per row: `{role, content}` (OpenAI / Hugging Face layout) or `{from, value}`
    (ShareGPT `conversations`, roles human / gpt / system)."""


def render(
    cfg: ChatTask, rows: Any, *, labelled: bool = True, labels: None = None, empty: EmptyPolicy = "error",
) -> Rendered:
    """Render conversations as examples. `system_prompt`, when set, is added to conversations that have
    no system turn of their own. `labelled=False` (prediction) keeps the turns up to the last user turn
    and asks for the next answer."""
    require_columns(rows, {"messages_column": cfg.messages_column}, cfg.name)
    template = cfg.prompt_template or DEFAULT_TEMPLATE
    check_template(template, FIELDS, cfg.name)
    cells = column(rows, cfg.messages_column)

    def make(i: int) -> Example:
        turns = [_turn(t, i, cfg) for t in _turn_list(cells[i], i, cfg)]
        turns = [{"role": t["role"], "content": template.format(content=t["content"])} if t["role"] == "user"
                 else t for t in turns]
        if cfg.system_prompt and not any(t["role"] == "system" for t in turns):
            turns.insert(0, {"role": "system", "content": cfg.system_prompt})
        keep = _last(turns, "assistant" if labelled else "user")
        if keep is None:
            raise EmptyText(cfg.messages_column, i, cfg.name,
                            what=f"has no {'assistant' if labelled else 'user'} turn")
        turns = turns[: keep + 1]
        if not labelled:
            turns.append({"role": "assistant", "content": ""})
        return Example(cfg.name, i, tuple(turns))

    return render_rows(len(cells), make, cfg.name, empty, unlabelled_fix="")


class Chat(OpenKind):
    """The `chat` kind (`multitune.tasks.base.TaskKind`)."""

    name = card_name = "chat"
    config = ChatTask
    default_system = DEFAULT_SYSTEM
    render = staticmethod(render)


def _turn_list(cell: Any, row: int, cfg: ChatTask) -> Sequence[Any]:
    if cell is None:
        raise EmptyText(cfg.messages_column, row, cfg.name)
    if isinstance(cell, str) or not isinstance(cell, Sequence):
        raise UserError(
            f"column {cfg.messages_column!r} should hold a list of turns ({{role, content}} or ShareGPT "
            f"{{from, value}}), got a {type(cell).__name__} ({cell!r:.60})",
            where=f"task {cfg.name}, row {row}",
            fix=f"point tasks.{cfg.name}.messages_column at the column holding the conversations",
        )
    return cell


def _turn(turn: Any, row: int, cfg: ChatTask) -> Message:
    """One turn as {role, content} with our role names."""
    if isinstance(turn, Mapping) and turn.get("role") is not None:
        role, content, key = turn.get("role"), turn.get("content"), "content"
    elif isinstance(turn, Mapping) and turn.get("from") is not None:
        role, content, key = turn.get("from"), turn.get("value"), "value"
    else:
        raise UserError(f"a turn should be {{role, content}} or {{from, value}}, got {turn!r:.80}",
                        where=f"task {cfg.name}, row {row}")
    if role not in ROLES:
        raise UserError(f"unknown role {role!r} in a turn", where=f"task {cfg.name}, row {row}",
                        fix=f"use one of {', '.join(ROLES)}")
    return {"role": ROLES[role], "content": text_cell(content, f"{cfg.messages_column}[].{key}", row, cfg.name)}


def _last(turns: Sequence[Message], role: str) -> int | None:
    return next((i for i in range(len(turns) - 1, -1, -1) if turns[i]["role"] == role), None)
