"""The config fields every task has, whatever its kind (`tasks:` entries of a run's config). Each kind's
module subclasses `TaskBase` with its `kind` and its columns and template fields."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from multitune.section import Section

TASK_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class TaskBase(Section):
    name: str
    """Unique; names the task in overrides (`tasks.<name>.source=...`), metrics and output folders."""
    source: str
    """A Hugging Face Hub dataset id, a local file (csv, tsv, jsonl, json, parquet), a folder of such files,
    a folder written by `datasets.save_to_disk`, or `demo:<name>` for data multitune generates."""
    config_name: str | None = None
    """The Hub dataset's configuration (subset), e.g. `plain_text`; passed as `name=` to `load_dataset`."""
    revision: str | None = None
    """A Hub branch, tag or commit of the dataset; pin it for reproducible runs. The token comes from
    `HF_TOKEN` or `huggingface-cli login`, never from the config."""
    split: str = "train"
    """The split to train on. Slices work as in `datasets` (`train[:2000]`). A single local file is read
    as this split whatever its name."""
    val_split: str | None = None
    """Evaluate on this existing split of the source (e.g. `validation`) instead of carving
    `data.val_fraction` of the training split."""
    weight: float = Field(1.0, gt=0)
    """The task's share of each epoch, relative to the others (`data.mixture`). With the default
    `proportional` mixture it is how many times each training row is seen per epoch (0.5 = half of the
    rows, drawn with the run's seed; 2 = every row twice)."""
    max_rows: int | None = Field(None, ge=1)
    """Read at most this many rows from the source (before the split)."""
    max_examples_per_epoch: int | None = Field(None, ge=1)
    """Cap on this task's training examples per epoch, applied after the mixture strategy."""
    system_prompt: str | None = None
    """Replaces the kind's default system prompt; an empty string sends none."""
    prompt_template: str | None = None
    """Replaces the kind's default user-turn template (Python `str.format` fields, see the kind)."""
    train: bool = True
    """`false` makes the task evaluated but never trained (a retention task): its rows are split as usual
    and its validation rows scored before and after training like every task's, but it takes no share of
    the mixture and no gradient comes from it, so its before/after change is what training cost it
    (catastrophic forgetting) and is reported under "retention"."""
    kind: str
    """Which task kind reads the rows (`multitune.tasks.KINDS`); each kind's section narrows it to its
    name. Last, so a saved config lists it where it always did: after the shared fields."""

    @field_validator("name")
    @classmethod
    def _name_is_an_identifier(cls, v: str) -> str:
        if not TASK_NAME.match(v):
            raise ValueError(f"task name {v!r} may only hold letters, digits, '_' and '-'")
        return v

    @model_validator(mode="after")
    def _val_split_differs(self) -> TaskBase:
        problems = []
        if self.val_split is not None and self.val_split == self.split:
            problems.append(f"val_split {self.val_split!r} is the training split: validation rows would be "
                            "trained on; name another split, or leave val_split unset to carve one")
        # A saved config.yaml spells out the defaults, so only a value changed from its default is refused.
        if not self.train and (self.weight != 1.0 or self.max_examples_per_epoch is not None):
            problems.append("weight and max_examples_per_epoch set a trained task's share of the mixture; this "
                            "task has train: false (evaluated only): remove them, or set train: true")
        if problems:
            raise ValueError("; ".join(problems))
        return self
