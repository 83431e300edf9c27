"""Run configuration: typed sections, YAML loading, overrides, saving. Each task kind's section lives with
its kind (`multitune.tasks.<kind>`)."""

from multitune.config.load import apply_overrides, dump, load, save, validate
from multitune.config.schema import AdapterConfig, DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from multitune.config.tasks import TaskConfig

__all__ = [
    "AdapterConfig",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "RunConfig",
    "TaskConfig",
    "TrainConfig",
    "apply_overrides",
    "dump",
    "load",
    "save",
    "validate",
]
