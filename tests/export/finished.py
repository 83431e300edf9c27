"""One small finished run for the shipping tests (merge, push, card, chat, serve), built once a session.

A LoRA run on the tiny model with two demo tasks (a classification and an instruction task) and
`modules_to_save: [embed_tokens, lm_head]` like the quickstart, trained hard enough (high learning rate)
that the adapter moves the logits a lot: a merge that dropped any part of it could not pass for correct.
"""

from __future__ import annotations

from pathlib import Path

from bench.export.llamacpp import TINY_RUN  # the llama.cpp check runs this same run

_built: dict[str, Path] = {}


def finished_run(tmp_path_factory) -> Path:
    """The run's output_dir; the tests sharing it must not change it."""
    if "run" not in _built:
        from multitune.config import validate
        from multitune.recipes.train import run

        out = tmp_path_factory.mktemp("finished") / "run"
        run(validate({"output_dir": str(out), **TINY_RUN}))
        _built["run"] = out
    return _built["run"]


def adapter_run(folder: Path, tiny_dir: Path, tokenizer, adapter: dict, seed: int = 0) -> Path:
    """A run folder (config.yaml + adapter/) holding a fresh adapter of `adapter`'s method on the tiny base,
    its weights moved off their start as training would (no training: seconds, not a run)."""
    import torch
    from transformers import AutoModelForCausalLM

    from multitune.config import dump, validate
    from multitune.config.schema import AdapterConfig
    from multitune.models import adapters

    torch.manual_seed(seed)
    cfg = AdapterConfig(**adapter)
    model = adapters.attach(AutoModelForCausalLM.from_pretrained(tiny_dir), cfg)
    initial = adapters.initial_weights(model, cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
    adapters.save_final(model, tokenizer, folder / "adapter", adapters.gather_for_saving(model, trainable_only=True),
                        initial)
    run_cfg = validate({"model": {"name": str(tiny_dir)}, "adapter": adapter,
                        "tasks": [{"name": "claims", "kind": "classification", "source": "demo:claims"}]})
    (folder / "config.yaml").write_text(dump(run_cfg))
    return folder
