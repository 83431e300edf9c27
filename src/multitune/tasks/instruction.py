"""Instruction following (alpaca layout): an instruction, an optional input, the expected output."""

from __future__ import annotations

from typing import Any, Literal

from multitune.tasks.base import (
    EmptyPolicy,
    Example,
    OpenKind,
    Rendered,
    chat,
    check_template,
    column,
    render_rows,
    require_columns,
    system_prompt,
    text_cell,
)
from multitune.tasks.config import TaskBase

DEFAULT_SYSTEM = "You are a helpful assistant."
DEFAULT_TEMPLATE = "{instruction}\n\n{input}"
FIELDS = ("instruction", "input")


class InstructionTask(TaskBase):
    """Template fields: `{instruction}`, `{input}` (empty when the row has none)."""

    kind: Literal["instruction"]
    instruction_column: str = "instruction"
    input_column: str = "input"
    output_column: str = "output"


def render(
    cfg: InstructionTask, rows: Any, *, labelled: bool = True, labels: None = None, empty: EmptyPolicy = "error",
) -> Rendered:
    """Render rows as examples; `labelled=False` (prediction) reads no output column. The input column
    is optional: without it (or with a blank cell) the user turn is the instruction alone."""
    wanted = {"instruction_column": cfg.instruction_column}
    wanted |= {"output_column": cfg.output_column} if labelled else {}
    require_columns(rows, wanted, cfg.name)
    template = cfg.prompt_template or DEFAULT_TEMPLATE
    check_template(template, FIELDS, cfg.name)
    system = system_prompt(cfg, DEFAULT_SYSTEM)
    instructions = column(rows, cfg.instruction_column)
    has_input = cfg.input_column in rows.column_names
    inputs = column(rows, cfg.input_column) if has_input else [None] * len(instructions)
    outputs = column(rows, cfg.output_column) if labelled else [None] * len(instructions)

    def make(i: int) -> Example:
        instruction = text_cell(instructions[i], cfg.instruction_column, i, cfg.name, required=labelled)
        extra = text_cell(inputs[i], cfg.input_column, i, cfg.name, required=False)
        output = text_cell(outputs[i], cfg.output_column, i, cfg.name) if labelled else ""
        # strip(): an empty input leaves no dangling separator after the instruction.
        user = template.format(instruction=instruction, input=extra).strip()
        return Example(cfg.name, i, chat(system, user, output))

    return render_rows(len(instructions), make, cfg.name, empty, unlabelled_fix="")


class Instruction(OpenKind):
    """The `instruction` kind (`multitune.tasks.base.TaskKind`)."""

    name = card_name = "instruction"
    config = InstructionTask
    default_system = DEFAULT_SYSTEM
    render = staticmethod(render)
