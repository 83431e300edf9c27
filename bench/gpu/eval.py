"""The eval section of bench/gpu/check.py: multitune's own evaluation on the random-weight model of the
shape, as a training run evaluates it.

The run config is a user's (the tasks, LoRA, `eval.max_rows` and `eval.generate_max_rows`, nothing else),
resolved for this machine (`models.load.for_this_machine`): on a GPU the base is bfloat16 under bf16
autocast, with the default LoRA attached and prepared by accelerate, then unwrapped and evaluated under
the run's autocast as the `train` recipe's `evaluate_run` does. The sets come from `eval.runner.build_eval_sets` on the check's seeded splits
(banking77: classification over 77 labels, scored by the exact best-first search; commonsense_qa:
multiple choice, 5 letters in one tree pass), and `eval.runner.evaluate` runs them.

Per task, two timed passes over the same rows (on a GPU after an untimed warm-up on a batch of each
task): scoring only (`generate=False`), then scoring with greedy generation on `generate_max_rows` of
them (`generate=True`). Generation's seconds, forward calls and positions are the second pass's less the
first's. A forward pre-hook on the decoder counts the forward calls and the token positions fed to them.
A model with random weights has no preference: the label search degrades to feeding the whole tree, and
generation runs to its cap (longest label + 8 tokens) as no end of turn comes: the worst case of both.
The prompts keep the tokenizer's own ids (under `tokenizer_vocab`); every scored position still has the
model's whole vocabulary of logits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.gpu.data import SEED, Streams
from bench.gpu.shapes import SKIP_CUDA, Shape, free_memory, random_model
from bench.gpu.steps import accelerator_for, settings, synchronize
from multitune.config import EvalConfig, RunConfig, validate
from multitune.eval.items import EvalSet
from multitune.eval.runner import build_eval_sets, evaluate
from multitune.models import adapters, load

# The metrics each task reports (those its kind has).
METRICS = ("accuracy", "macro_f1", "loss", "gen_accuracy", "gen_invalid_rate", "rows", "gen_rows")


@dataclass
class ForwardCounter:
    """Forward calls of a decoder and the token positions fed to it (a forward pre-hook)."""

    calls: int = 0
    positions: int = 0
    handle: Any = field(default=None, repr=False)

    def attach(self, decoder: Any) -> ForwardCounter:
        self.handle = decoder.register_forward_pre_hook(self._count, with_kwargs=True)
        return self

    def _count(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls += 1
        self.positions += int(ids.numel()) if ids is not None else 0


def eval_config(shape: Shape, tasks: list[dict[str, Any]]) -> tuple[RunConfig, dict[str, Any]]:
    """A user's run config for the evaluation, resolved for this machine; and what the check sets in it."""
    overrides = {"adapter": {"r": shape.lora_r, "alpha": shape.lora_alpha}, "data": {"max_seq_len": shape.pack_len},
                 "eval": {"max_rows": shape.eval_rows, "generate_max_rows": shape.eval_generate_rows}}
    user = {"model": {"name": f"random {shape.layers}-layer model"}, "seed": SEED, "tasks": tasks, **overrides}
    return load.for_this_machine(validate(user, origin="bench/gpu/eval.py")), overrides


def decoder(model: Any) -> Any:
    """The decoder stack (`LlamaModel`) under a peft wrapper: every forward, generation's included, calls it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def measure_eval(shape: Shape, streams: Streams) -> dict[str, Any]:
    """Both passes for every task; see the module docstring. Frees the GPU before returning."""
    started = time.perf_counter()
    cfg, overrides = eval_config(shape, streams.tasks)
    accelerator = accelerator_for(cfg, None)
    base = random_model(shape, shape.layers, streams.tokenizer, accelerator.device, dtype=cfg.model.dtype,
                        attn_implementation=cfg.model.attn_implementation)
    torch.manual_seed(SEED)
    model = accelerator.prepare(adapters.attach(base, cfg.adapter, autocast=cfg.train.mixed_precision != "no"))
    plain = accelerator.unwrap_model(model, keep_torch_compile=False)  # as the recipe evaluates
    sets = build_eval_sets(streams.tokenizer, streams.splits, cfg.data.max_seq_len, cfg.data.truncation)
    pad = load.pad_id(streams.tokenizer)
    counter = ForwardCounter().attach(decoder(plain))
    out: dict[str, Any] = {"layers": shape.layers, "method": cfg.adapter.method, "settings": settings(cfg),
                           "overrides": overrides, "micro_batch_size": cfg.eval.micro_batch_size,
                           "weights_gib": round(weights_gib(plain), 2)}
    try:
        with accelerator.autocast():  # as the recipe's evaluate_run: generation calls past the wrapped forward
            if torch.cuda.is_available():  # kernels, the allocator and the caches warm up on a batch of each task
                warm = cfg.eval.model_copy(update={"max_rows": cfg.eval.micro_batch_size, "generate_max_rows": 2})
                evaluate(plain, streams.tokenizer, sets, warm, pad, generate=True)
            out["setup_s"] = round(time.perf_counter() - started, 2)
            for es in sets:
                out[es.name] = measure_task(plain, streams.tokenizer, es, cfg.eval, pad, counter)
    finally:
        counter.handle.remove()
        accelerator.free_memory()
        del model, plain, base
        free_memory()
    return out


def measure_task(model: Any, tokenizer: Any, es: EvalSet, cfg: EvalConfig, pad_id: int,
                 counter: ForwardCounter) -> dict[str, Any]:
    """The scoring pass, then the same with generation; rows/s, forward calls, peak memory, metrics."""
    score = timed_pass(model, tokenizer, es, cfg, pad_id, counter, generate=False)
    both = timed_pass(model, tokenizer, es, cfg, pad_id, counter, generate=True)
    rows = min(cfg.max_rows or len(es.items), len(es.items))
    trie = es.items[0].trie
    generation = {key: both[key] - score[key] for key in ("seconds", "forward_calls", "positions")}
    gen_rows = int(both["metrics"].get("gen_rows", 0))
    return {
        "kind": es.kind, "candidates": len(trie.candidates) if trie else None, "tree_nodes": len(trie) if trie else None,
        "validation_rows": len(es.items), "rows_given": rows,
        "generate_rows_given": min(cfg.generate_max_rows or rows, rows),
        "scoring": {**rounded(score, ("seconds", "forward_calls", "positions", "peak_memory_gib")),
                    "rows_per_s": round(int(score["metrics"]["rows"]) / score["seconds"], 2)},
        "generation": {**rounded(generation, ("seconds", "forward_calls", "positions")),
                       "peak_memory_gib": both["peak_memory_gib"],
                       "rows_per_s": round(gen_rows / generation["seconds"], 2) if generation["seconds"] > 0 else
                       "not measurable (the pass with generation was not slower)"},
        "metrics": {k: round(v, 4) for k, v in both["metrics"].items() if k in METRICS},
        "same_scores_both_passes": all(score["metrics"].get(k) == both["metrics"].get(k) for k in ("accuracy", "loss")),
    }


def timed_pass(model: Any, tokenizer: Any, es: EvalSet, cfg: EvalConfig, pad_id: int, counter: ForwardCounter,
               generate: bool) -> dict[str, Any]:
    counter.calls = counter.positions = 0
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    synchronize()
    started = time.perf_counter()
    result = evaluate(model, tokenizer, [es], cfg, pad_id, generate=generate)[es.name]
    synchronize()
    return {"seconds": time.perf_counter() - started, "forward_calls": counter.calls, "positions": counter.positions,
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available()
            else SKIP_CUDA, "metrics": result.metrics}


def rounded(values: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: round(values[k], 3) if isinstance(values[k], float) else values[k] for k in keys}


def weights_gib(model: Any) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
