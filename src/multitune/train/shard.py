"""FSDP2 sharding, applied by multitune itself: the same code on CPU processes (gloo) and GPUs (NCCL).

accelerate refuses FSDP on CPUs, so multitune does not hand the model to accelerate's FSDP: it applies
torch's `fully_shard` itself, as torchtitan and accelerate's FSDP2 do (one unit per decoder layer, then
the transformers model as the root), and lets accelerate do the rest (process group, devices, mixed
precision, the optimizer wrapper). Whether to shard is the launch's business, never the run YAML's: the
settings are accelerate's own environment variables, which `accelerate launch --config_file
configs/accelerate/fsdp-*.yaml` exports and which a torchrun user sets directly:

    ACCELERATE_USE_FSDP=true                 shard with FSDP2 (FSDP_VERSION, when set, must be 2)
    FSDP_RESHARD_AFTER_FORWARD=true|false    free each layer's gathered weights after its forward (default true)
    FSDP_TRANSFORMER_CLS_TO_WRAP=A,B         the decoder layer classes (default: the model's own)
    FSDP_CPU_RAM_EFFICIENT_LOADING=true      only local rank 0 reads the weights; the others get them
                                             broadcast after sharding (transformers loads them empty)
    PARALLELISM_CONFIG_DP_REPLICATE_SIZE=R   HSDP: R copies (nodes), each sharded over
    PARALLELISM_CONFIG_DP_SHARD_SIZE=S       S processes (a node's GPUs); R x S = all processes

Gradients are reduced in float32 whatever the weights' dtype. A sharded model has no DDP-style
`no_sync`: its gradients are reduce-scattered after every micro-batch and accumulate as shards, so no
process holds a whole unsharded gradient between micro-batches (what full fine-tuning of a large model
cannot afford); under HSDP only the all-reduce between copies (the traffic between nodes) waits for the
step's last micro-batch (`accumulating`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from multitune.errors import UserError
from multitune.train.collectives import any_process

FLAG = "ACCELERATE_USE_FSDP"
HSDP_FLAG = "ACCELERATE_USE_PARALLELISM_CONFIG"
REPLICATE = "PARALLELISM_CONFIG_DP_REPLICATE_SIZE"
SHARD = "PARALLELISM_CONFIG_DP_SHARD_SIZE"


@dataclass(frozen=True)
class Topology:
    """How the launch asked the processes to hold the model."""

    fsdp: bool = False
    replicate: int = 1  # HSDP: copies of the model (one per node)
    shard: int = 1  # processes each copy is sharded over
    reshard_after_forward: bool = True
    layer_classes: tuple[str, ...] = ()  # empty: the model's `_no_split_modules`
    efficient_loading: bool = False

    def describe(self) -> str:
        if not self.fsdp:
            return "no sharding"
        if self.replicate > 1:
            return f"HSDP: {self.replicate} copies x {self.shard} shards (FSDP2 on a 2-D mesh)"
        return f"FSDP2: {self.shard} shards"


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    return env.get(name, str(default)).strip().lower() in ("1", "true", "yes")


def topology(world_size: int, mixed_precision: str = "no", env: Mapping[str, str] | None = None) -> Topology:
    """The topology the launch's environment asks for; refuses what multitune's FSDP path does not do.

    >>> topology(4, env={"ACCELERATE_USE_FSDP": "true"}).describe()
    'FSDP2: 4 shards'
    >>> topology(4, env={"ACCELERATE_USE_FSDP": "true", "PARALLELISM_CONFIG_DP_REPLICATE_SIZE": "2"}).describe()
    'HSDP: 2 copies x 2 shards (FSDP2 on a 2-D mesh)'
    >>> topology(4, env={}).fsdp
    False
    """
    env = os.environ if env is None else env
    if not _flag(env, FLAG):
        return Topology()
    problems = []
    if mixed_precision == "fp16":
        problems.append("train.mixed_precision=fp16: sharded gradients would need a gradient scaler that agrees "
                        "across processes; use bf16 (A100, H100, L4 and newer have it)")
    if env.get("FSDP_VERSION", "2").strip() != "2":
        problems.append(f"FSDP_VERSION={env['FSDP_VERSION']}: multitune shards with FSDP2 only "
                        "(fsdp_version: 2 in the accelerate config)")
    for name, setting in [("FSDP_OFFLOAD_PARAMS", "fsdp_offload_params"),
                          ("FSDP_ACTIVATION_CHECKPOINTING", "fsdp_activation_checkpointing")]:
        if _flag(env, name):
            fix = "use train.gradient_checkpointing=true" if "CHECKPOINTING" in name else "more GPUs, QLoRA"
            problems.append(f"{name}=true ({setting}): not supported by multitune's FSDP path; {fix}")
    for name in ("PARALLELISM_CONFIG_TP_SIZE", "PARALLELISM_CONFIG_CP_SIZE", "PARALLELISM_CONFIG_SP_SIZE"):
        if env.get(name, "1").strip() not in ("", "1"):
            problems.append(f"{name}={env[name]}: multitune parallelises data only (FSDP, HSDP, DDP)")
    replicate = _size(env, REPLICATE, problems)
    shard = _size(env, SHARD, problems)
    if not (replicate or shard):
        replicate, shard = 1, world_size
    elif not shard:
        shard = max(1, world_size // replicate)
    elif not replicate:
        replicate = max(1, world_size // shard)
    if replicate * shard != world_size:
        problems.append(f"{replicate} copies x {shard} shards ({REPLICATE}, {SHARD}) is not the {world_size} "
                        "processes launched")
    if problems:
        raise UserError("the launch asks for a topology multitune cannot run:\n" + "\n".join(f"  - {p}" for p in problems),
                        where="the launch environment (accelerate config file, or variables set for torchrun)",
                        fix="see docs/distributed.md for the settings each layout takes")
    classes = tuple(c.strip() for c in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip())
    return Topology(True, replicate, shard, _flag(env, "FSDP_RESHARD_AFTER_FORWARD", True), classes,
                    _flag(env, "FSDP_CPU_RAM_EFFICIENT_LOADING"))


def _size(env: Mapping[str, str], name: str, problems: list[str]) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) < 1:
        problems.append(f"{name}={raw!r} is not a positive whole number")
        return 0
    return int(raw)


@contextlib.contextmanager
def hidden_from_accelerate() -> Iterator[None]:
    """Build the Accelerator inside this: it sees plain data parallelism (so it sets up the process
    group, devices and mixed precision, and refuses nothing on CPUs), and the sharding stays ours."""
    saved = {k: os.environ.get(k) for k in (FLAG, HSDP_FLAG)}
    try:
        for k in saved:
            os.environ[k] = "false"
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def shard_model(model: Any, topo: Topology, accelerator: Any) -> Any:
    """Apply FSDP2 to `model` in place (a no-op without FSDP): each decoder layer one unit, the
    transformers model the root, on a 1-D mesh (FSDP) or a 2-D one (HSDP: replicate x shard).

    bitsandbytes' 4-bit weights stay whole on every process (FSDP2 would turn them into plain tensors
    and lose their quantisation state); LoRA, norms, embeddings and head are sharded. Trainable weights
    of several dtypes (LoRA in float32 beside a bfloat16 `modules_to_save` copy) become float32, the one
    dtype a unit's gradients can be reduced in. Weights that transformers left empty on the processes
    that did not read them (efficient loading) are broadcast from process 0.
    """
    if not topo.fsdp:
        return model
    device = accelerator.device
    root = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft's wrapper
    _uniform_trainable_dtype(model)
    empty = any_process(any(p.is_meta for p in model.parameters()), accelerator)
    whole = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True)) if empty else {}
    if topo.replicate > 1:
        mesh = init_device_mesh(device.type, (topo.replicate, topo.shard), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(device.type, (topo.shard,), mesh_dim_names=("shard",))
    kwargs = {"mesh": mesh, "mp_policy": MixedPrecisionPolicy(reduce_dtype=torch.float32),
              "ignored_params": {p for p in model.parameters() if type(p).__name__ == "Params4bit"} or None}
    for layer in decoder_layers(root, topo.layer_classes):
        fully_shard(layer, reshard_after_forward=topo.reshard_after_forward, **kwargs)
    fully_shard(root, **kwargs)  # embeddings, final norm and head; kept gathered between forward and backward
    if empty:
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            model.to_empty(device=device)
        set_model_state_dict(model, whole if dist.get_rank() == 0 else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        for buffer in model.buffers():  # non-persistent ones (rotary frequencies) are in no state dict
            dist.broadcast(buffer, src=0)
    return model


def decoder_layers(model: Any, classes: tuple[str, ...] = ()) -> list[torch.nn.Module]:
    """The modules to shard one by one: instances of `classes`, else of the model's `_no_split_modules`
    (LlamaDecoderLayer for Llama); refused when there are none (one unit would gather the whole model)."""
    names = set(classes or getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise UserError(f"found no decoder layer to shard in {type(model).__name__} (looked for "
                        f"{', '.join(sorted(names)) or 'the model’s _no_split_modules'})",
                        where="FSDP_TRANSFORMER_CLS_TO_WRAP / fsdp_transformer_layer_cls_to_wrap",
                        fix="name the model's decoder layer class, e.g. LlamaDecoderLayer")
    return layers


def _uniform_trainable_dtype(model: Any) -> None:
    trainable = [p for p in model.parameters() if p.requires_grad]
    if len({p.dtype for p in trainable}) > 1:
        for p in trainable:
            p.data = p.data.float()


def is_sharded(model: Any) -> bool:
    """Whether FSDP2 holds `model` (its parameters are DTensors)."""
    return any(hasattr(p, "device_mesh") for p in model.parameters())


def describe_shards(model: Any) -> str:
    """What this process holds, for the run's log: 'DTensor parameters, 1/2 of 1,234,567 elements here'."""
    total = local = whole = 0
    for p in model.parameters():
        total += p.numel()
        if hasattr(p, "to_local"):
            local += p.to_local().numel()
        else:
            whole += p.numel()
            local += p.numel()
    kept = f", {whole:,} of them whole on every process (4-bit weights)" if whole else ""
    return f"DTensor parameters; this process holds {local:,} of {total:,} elements{kept}"


def reshard(model: Any) -> None:
    """Give every unit its shards back after forward passes with no backward (an evaluation). The root
    keeps its gathered weights from a forward to the backward that would free them; until then the
    optimizer and checkpoints would see those gathered tensors instead of the sharded parameters."""
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


@contextlib.contextmanager
def accumulating(model: Any, accelerator: Any) -> Iterator[None]:
    """Around every micro-batch of a step but the last: DDP keeps its gradients local (`no_sync`); a
    sharded model reduce-scatters them as usual (the accumulated gradient stays a shard) and only HSDP's
    all-reduce between copies waits for the last micro-batch."""
    roots = [m for m in model.modules() if hasattr(m, "set_requires_all_reduce")][:1]
    if not roots:
        with accelerator.no_sync(model):
            yield
        return
    roots[0].set_requires_all_reduce(False)
    try:
        yield
    finally:
        roots[0].set_requires_all_reduce(True)


def prepare(accelerator: Any, model: Any, optimizer: Any) -> tuple[Any, Any]:
    """accelerate's preparation: a sharded model gets its mixed precision and compilation only (its
    gradients are already synchronised by FSDP2, so no DDP wrapper); any other one the whole of it."""
    if not is_sharded(model):
        return accelerator.prepare(model, optimizer)
    return accelerator.prepare_model(model, evaluation_mode=True), accelerator.prepare_optimizer(optimizer)
