"""Run configuration: typed sections, YAML loading, overrides, saving."""

from multitune.config.load import apply_overrides, dump, load, save, validate
from multitune.config.schema import AdapterConfig, DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from multitune.config.tasks import (
    TASK_KINDS,
    ClassificationTask,
    InstructionTask,
    MultipleChoiceTask,
    TaskConfig,
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
