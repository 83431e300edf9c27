"""Run configuration: typed sections, YAML loading, overrides, saving."""

from multitune.config.load import apply_overrides, dump, load, save, validate
from multitune.config.schema import (
    TASK_KINDS,
    AdapterConfig,
    ClassificationTask,
    DataConfig,
    EvalConfig,
    InstructionTask,
    ModelConfig,
    MultipleChoiceTask,
    RunConfig,
    TaskConfig,
    TrainConfig,
)

__all__ = [
    "TASK_KINDS",
    "AdapterConfig",
    "ClassificationTask",
    "DataConfig",
    "EvalConfig",
    "InstructionTask",
    "ModelConfig",
    "MultipleChoiceTask",
    "RunConfig",
    "TaskConfig",
    "TrainConfig",
    "apply_overrides",
    "dump",
    "load",
    "save",
    "validate",
]
