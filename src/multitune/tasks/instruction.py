"""Instruction following (alpaca layout): an instruction, an optional input, the expected output."""

from __future__ import annotations

from typing import Any

from multitune.config.schema import InstructionTask
from multitune.tasks.base import Example, chat, check_template, require_columns, text_cell

DEFAULT_SYSTEM = "You are a helpful assistant."
DEFAULT_TEMPLATE = "{instruction}\n\n{input}"
FIELDS = ("instruction", "input")


def examples(cfg: InstructionTask, rows: Any, *, labelled: bool = True, labels: None = None) -> list[Example]:
    """Render rows as examples; `labelled=False` (prediction) reads no output column."""
    wanted = {"instruction_column": cfg.instruction_column}
    wanted |= {"output_column": cfg.output_column} if labelled else {}
    has_input = cfg.input_column in rows.column_names
    require_columns(rows, wanted, cfg.name)
    template = cfg.prompt_template or DEFAULT_TEMPLATE
    check_template(template, FIELDS, cfg.name)
    system = DEFAULT_SYSTEM if cfg.system_prompt is None else cfg.system_prompt
    inputs = rows[cfg.input_column] if has_input else [""] * len(rows)
    outputs = rows[cfg.output_column] if labelled else [""] * len(rows)
    out = []
    for i, (instruction, extra, output) in enumerate(zip(rows[cfg.instruction_column], inputs, outputs, strict=True)):
        instruction = text_cell(instruction, cfg.instruction_column, i, cfg.name)
        output = text_cell(output, cfg.output_column, i, cfg.name)
        extra = "" if extra is None else text_cell(extra, cfg.input_column, i, cfg.name)
        # strip(): an empty input leaves no dangling separator after the instruction.
        user = template.format(instruction=instruction, input=extra).strip()
        out.append(Example(cfg.name, i, chat(system, user, output)))
    return out
