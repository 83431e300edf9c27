"""Bytes each data-parallel layout moves between nodes per optimizer step (pure).

Per node, what it sends over the network (as much as it receives), for NCCL's ring algorithms: a ring
collective over R processes carries (R - 1) / R of the whole buffer across each link for an all-gather or
a reduce-scatter, twice that for an all-reduce. What multitune's FSDP path does (`train/shard.py`):

- fsdp (shard over every process of every node): each micro-batch all-gathers every decoder layer's
  weights twice (forward, and again in the backward: `reshard_after_forward`), the root (embeddings,
  head, final norm) once, and reduce-scatters the trainable gradients in float32; all of it crosses nodes;
- hsdp (shard within a node, a copy per node): gathers and reduce-scatters stay inside the node; between
  nodes only the float32 gradient shards are all-reduced, once per step (the micro-batches before the
  last skip it);
- ddp (a whole copy per process): one all-reduce of the gradients, in their dtype, per step.

bitsandbytes' 4-bit weights are never gathered (each process keeps them whole). NCCL's tree algorithms
and in-network reduction change the constants, not the orders of magnitude this is for.
"""

from __future__ import annotations

from dataclasses import dataclass

from multitune.plan.activations import Precision
from multitune.plan.estimate import Setup
from multitune.plan.memory import trainable_params
from multitune.plan.shapes import ModelShape

NETWORK_GBITS = 100.0
"""The inter-node bandwidth times are shown at: 100 Gbit/s per node, the low end of what GPU clouds
give multi-node instances (400-3200 Gbit/s InfiniBand or EFA are common). Bytes are what the plan claims;
seconds scale with the real link."""


@dataclass(frozen=True)
class Layout:
    name: str
    shards: int  # processes one copy of the weights is sharded over
    replicas: int  # copies


def layouts(gpus: int, nodes: int) -> list[Layout]:
    """The layouts of `gpus` processes on `nodes` nodes: HSDP (a copy per node) when there are several
    nodes, FSDP over all, DDP.

    >>> [(l.name, l.shards, l.replicas) for l in layouts(12, 3)]
    [('hsdp', 4, 3), ('fsdp', 12, 1), ('ddp', 1, 12)]
    >>> [l.name for l in layouts(4, 1)]
    ['fsdp', 'ddp']
    """
    out = [Layout("hsdp", gpus // nodes, nodes)] if nodes > 1 and gpus // nodes > 1 else []
    return out + [Layout("fsdp", gpus, 1), Layout("ddp", 1, gpus)]


def network_bytes(layout: Layout, nodes: int, micro_batches: int, layer_bytes: float, root_bytes: float,
                  trainable_params: int, grad_bytes: int) -> float:
    """Bytes one node sends to other nodes per optimizer step. `layer_bytes` / `root_bytes`: the weights
    FSDP gathers for all decoder layers / for the root, in their stored dtype; gradients are reduced in
    float32 under FSDP and HSDP, in their own dtype (`grad_bytes` each) under DDP.

    Llama 3 8B LoRA r=16 in bf16 (layers 14.13 GB, root 2.10 GB, 42M trainable) on 3 nodes x 4, 8 micro-batches:
    >>> gb = lambda layout: network_bytes(layout, 3, 8, 14.13e9, 2.10e9, 41_943_040, 4) / 1e9
    >>> [round(gb(l), 2) for l in layouts(12, 3)]
    [0.22, 223.87, 0.31]
    """
    if nodes <= 1:
        return 0.0
    n = layout.shards * layout.replicas
    if layout.name == "fsdp":
        per_micro_batch = 2 * layer_bytes + root_bytes + 4 * trainable_params
        return micro_batches * (n - 1) / n * per_micro_batch
    if layout.name == "hsdp":
        return 2 * (layout.replicas - 1) / layout.replicas * 4 * trainable_params
    return 2 * (n - 1) / n * grad_bytes * trainable_params


def seconds(nbytes: float, gbits: float = NETWORK_GBITS) -> float:
    """Seconds to send `nbytes` at `gbits` Gbit/s.

    >>> seconds(12.5e9)
    1.0
    """
    return nbytes * 8 / (gbits * 1e9)


def gathered_bytes(shape: ModelShape, setup: Setup, prec: Precision) -> tuple[float, float]:
    """(all decoder layers, root) bytes FSDP gathers: the base's weights in their dtype (QLoRA's 4-bit
    ones stay whole, never gathered), norms, adapters in float32, and the root's embeddings, head
    (float32 under QLoRA: peft casts them) and `modules_to_save` copies.

    >>> from multitune.plan.memory import resolve_targets
    >>> from multitune.plan.shapes import llama_shape
    >>> s = llama_shape(4096, 14336, 32, 32, 8, 128256)
    >>> layers, root = gathered_bytes(s, Setup("lora", 16, tuple(resolve_targets(s, "all-linear"))), Precision(2, 2))
    >>> round(layers / 1e9, 2), round(root / 1e9, 2)
    (14.13, 2.1)
    """
    t = trainable_params(shape, setup.method, setup.r, setup.targets if setup.method != "full" else (),
                         setup.modules_to_save)
    base = 0 if setup.method == "qlora" else shape.linear_params * prec.weights
    rest_bytes = 4 if setup.method == "qlora" else prec.weights
    norms = (shape.other_params - shape.hidden_size) * rest_bytes  # all but the final norm
    root = (shape.embedding_params + (shape.lm_head_params or 0) + shape.hidden_size) * rest_bytes
    return float(base + norms + (t.lora + t.dora) * prec.adapter), float(root + t.saved_modules * prec.weights)
