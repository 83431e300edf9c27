"""The typed shape of a run's YAML: nested, frozen pydantic models where unknown keys are errors.

Every field has a default that a user of the field would expect, and a docstring saying what it does.
Validation never rewrites a value; cross-field problems are collected and raised together.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    # Frozen so nothing downstream can mutate the resolved config; `extra=forbid` turns typos into errors;
    # numbers given where text is expected (a revision "1234", a label "3") stay text.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class TinyModelConfig(Section):
    """Shape and pre-training of the offline tiny Llama (`model.name: tiny`)."""

    vocab_size: int = Field(2048, ge=300)
    """Size of the byte-level BPE vocabulary trained on the run's own texts."""
    hidden_size: int = Field(256, ge=16)
    intermediate_size: int = Field(688, ge=16)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(8, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    """Fewer key/value heads than query heads: grouped-query attention, as in Llama 3."""
    max_position_embeddings: int = Field(2048, ge=64)
    pretrain_steps: int = Field(0, ge=0)
    """Language-model steps on the run's training inputs (never its answers) before adapters are
    trained. 0 (the default) keeps the random initialisation; `models/tiny.py` says why."""
    pretrain_learning_rate: float = Field(3e-3, gt=0)
    pretrain_batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        problems = []
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ModelConfig(Section):
    name: str = "tiny"
    """`tiny` (built offline), a Hugging Face Hub id such as `meta-llama/Llama-3.1-8B-Instruct`, or a local
    folder in Hugging Face format. The token comes from `HF_TOKEN` or `huggingface-cli login`, never from
    the config."""
    revision: str | None = None
    """A Hub branch, tag or commit; pin it for reproducible runs."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model repository. Off unless you trust its author."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights' dtype when loaded: `auto` is float32 on CPU and bfloat16 on a GPU that supports it."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    tiny: TinyModelConfig = TinyModelConfig()


class AdapterConfig(Section):
    method: Literal["lora", "full"] = "lora"
    """`lora` trains low-rank adapters through peft; `full` trains every weight."""
    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    """`all-linear` (every linear layer but the output head), `attention` (q/k/v/o projections) or an
    explicit list of module names."""
    modules_to_save: list[str] = []
    """Modules trained in full and saved with the adapter, e.g. `[embed_tokens, lm_head]` when the
    vocabulary changed or the base has never produced the answers' tokens."""


TASK_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class TaskBase(Section):
    name: str
    """Unique; names the task in overrides (`tasks.<name>.source=...`), metrics and output folders."""
    source: str
    """A Hub dataset id, a local file or folder, or `demo:<name>` for data multitune generates."""
    split: str = "train"
    """The split to read from the source; the validation split is carved from it (`data.val_fraction`)."""
    weight: float = Field(1.0, gt=0)
    """How many times each training row is seen per epoch, relative to the others (0.5 = half of the
    rows, drawn with the run's seed; 2 = every row twice)."""
    max_rows: int | None = Field(None, ge=1)
    """Read at most this many rows from the source (before the split)."""
    system_prompt: str | None = None
    """Replaces the kind's default system prompt; an empty string sends none."""
    prompt_template: str | None = None
    """Replaces the kind's default user-turn template (Python `str.format` fields, see the kind)."""

    @field_validator("name")
    @classmethod
    def _name_is_an_identifier(cls, v: str) -> str:
        if not TASK_NAME.match(v):
            raise ValueError(f"task name {v!r} may only hold letters, digits, '_' and '-'")
        return v


class ClassificationTask(TaskBase):
    kind: Literal["classification"]
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None
    """The label set, in order. Default: read from the data (names of a `ClassLabel` column, or the
    sorted distinct strings)."""


class MultipleChoiceTask(TaskBase):
    kind: Literal["multiple_choice"]
    question_column: str = "question"
    choices_column: str = "choices"
    """A `{label: [...], text: [...]}` mapping per row (the Hub layout of tau/commonsense_qa)."""
    answer_column: str = "answerKey"


class InstructionTask(TaskBase):
    kind: Literal["instruction"]
    instruction_column: str = "instruction"
    input_column: str = "input"
    output_column: str = "output"


TASK_KINDS: dict[str, type[TaskBase]] = {
    "classification": ClassificationTask,
    "multiple_choice": MultipleChoiceTask,
    "instruction": InstructionTask,
}

TaskConfig = Annotated[
    ClassificationTask | MultipleChoiceTask | InstructionTask,
    Field(discriminator="kind"),
]


class DataConfig(Section):
    val_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of each task's rows held out for validation (stratified by label for classification)."""
    max_seq_len: int = Field(1024, ge=8)
    truncation: Literal["truncate", "drop", "error"] = "truncate"
    """What to do with an example longer than `max_seq_len`: cut the prompt from the left (never the
    answer), drop it, or stop with an error naming it."""


class TrainConfig(Section):
    epochs: int = Field(2, ge=1)
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps; overrides `epochs` when set."""
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    """Share of the optimizer steps spent warming the learning rate up from 0."""
    weight_decay: float = Field(0.0, ge=0)
    micro_batch_size: int = Field(8, ge=1)
    """Examples per forward pass on each process."""
    grad_accum_steps: int = Field(1, ge=1)
    """Micro-batches per optimizer step on each process. global batch = micro x accum x processes."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the gradient norm to this; null turns clipping off."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"


class EvalConfig(Section):
    every_steps: int | None = Field(None, ge=1)
    """Evaluate every this many optimizer steps, as well as before training and at the end."""
    baseline: bool = True
    """Evaluate the untrained model first so the gain is visible."""
    micro_batch_size: int = Field(16, ge=1)
    max_rows: int | None = Field(None, ge=1)
    """Evaluate at most this many validation rows per task (the first ones of the seeded split)."""


class CheckpointConfig(Section):
    every_steps: int | None = Field(None, ge=1)
    """Save a resumable checkpoint every this many optimizer steps (and always at the end)."""


class WandbConfig(Section):
    project: str = "multitune"
    entity: str | None = None
    run_name: str | None = None
    mode: Literal["online", "offline"] = "online"
    """`offline` writes the run under `output_dir/wandb` for a later `wandb sync`."""
    tags: list[str] = []


class LoggingConfig(Section):
    every_steps: int = Field(10, ge=1)
    """Write a `metrics.jsonl` row (and a tracker point) every this many optimizer steps."""
    wandb: WandbConfig | None = None
    """Log to Weights & Biases too; needs `pip install 'multitune[wandb]'` and `WANDB_API_KEY` or
    `wandb login` when online."""


REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class HubConfig(Section):
    """Where the result goes on the Hugging Face Hub. The token comes from `HF_TOKEN` or `hf auth login`,
    never from the config."""

    repo_id: str
    """`OWNER/NAME` of the model repository; created if it does not exist."""
    private: bool = True
    """Create the repository private (automatic pushes should not publish by surprise); an existing
    repository keeps its visibility."""
    push_at_end: bool = True
    """Push the adapter (or the merged model, see `merged`) with its model card when training ends."""
    merged: bool = False
    """Push the merged full model instead of the adapter."""
    push_checkpoints: bool = False
    """Upload each checkpoint to `last-checkpoint/` in the repository, in the background, so a run on a
    preemptible machine survives losing its disk."""

    @field_validator("repo_id")
    @classmethod
    def _owner_slash_name(cls, v: str) -> str:
        if not REPO_ID.match(v):
            raise ValueError(f"repo_id {v!r} is not of the form OWNER/NAME")
        return v


class RunConfig(Section):
    output_dir: str = "runs/default"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    adapter: AdapterConfig = AdapterConfig()
    tasks: list[TaskConfig] = Field(min_length=1)
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    hub: HubConfig | None = None
    """Push the result (and optionally checkpoints) to the Hugging Face Hub; null keeps it local."""

    @model_validator(mode="after")
    def _tasks_named_once(self) -> RunConfig:
        names = [t.name for t in self.tasks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"task names must be unique; repeated: {', '.join(repeated)}")
        return self

    def task(self, name: str) -> TaskConfig:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)
