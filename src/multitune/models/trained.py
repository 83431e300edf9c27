"""Loading a finished run's model for inference: base + adapter, or the fully fine-tuned model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from multitune.config.schema import RunConfig
from multitune.errors import UserError
from multitune.models import adapters, load
from multitune.models.run_folder import open_run


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config of a finished run, once every file of the run folder is checked (`open_run`
    refuses a folder that holds no finished run, and a damaged file by name)."""
    return open_run(run_dir).cfg


def load_run(run_dir: str | Path) -> tuple[Any, Any, RunConfig]:
    """(model in eval mode, tokenizer, the run's resolved config) from a run's output_dir."""
    run = open_run(run_dir)
    cfg = run.cfg
    tokenizer = load.load_tokenizer(str(run.model_dir), cfg.model)
    if run.base_name is not None:
        if cfg.model.name == "tiny" and not Path(run.base_name).is_dir():
            raise UserError(f"the tiny base model this adapter was trained on is gone from the cache ({run.base_name})",
                            fix="train the run again to rebuild it (MULTITUNE_CACHE must point at the same cache)")
        model = adapters.load_adapter(load.load_model(run.base_name, cfg.model), run.model_dir)
    else:
        model = load.load_model(str(run.model_dir), cfg.model)
    return model.eval(), tokenizer, cfg
