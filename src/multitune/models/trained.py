"""Loading a finished run's model for inference: base + adapter, or the fully fine-tuned model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from multitune import config
from multitune.config.schema import RunConfig
from multitune.errors import UserError
from multitune.models import adapters, load


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config of a finished run (refusing a folder that holds no finished run)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "adapter").is_dir():
        raise UserError(f"{run_dir} is not a finished run (no config.yaml or adapter/)",
                        fix="pass the output_dir of a run that `multitune train` completed")
    return config.load(run_dir / "config.yaml")


def load_run(run_dir: str | Path) -> tuple[Any, Any, RunConfig]:
    """(model in eval mode, tokenizer, the run's resolved config) from a run's output_dir."""
    cfg = read_run_config(run_dir)
    adapter_dir = Path(run_dir) / "adapter"
    tokenizer = load.load_tokenizer(str(adapter_dir), cfg.model)
    adapter_cfg = adapter_dir / "adapter_config.json"
    if adapter_cfg.is_file():
        base_name = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        if cfg.model.name == "tiny" and not Path(base_name).is_dir():
            raise UserError(f"the tiny base model this adapter was trained on is gone from the cache ({base_name})",
                            fix="train the run again to rebuild it (MULTITUNE_CACHE must point at the same cache)")
        model = adapters.load_adapter(load.load_model(base_name, cfg.model), adapter_dir)
    else:
        model = load.load_model(str(adapter_dir), cfg.model)
    return model.eval(), tokenizer, cfg
