"""Evaluation in lockstep: every process runs the same sequence of forward passes.

Under FSDP a forward pass is a series of all-gathers (one per sharded unit) that every process must join;
a process that runs one pass more than the others waits for them forever. DDP hides this (its forward
needs no other process), so evaluation keeps these rules on every topology:

1. every process evaluates a shard of the same length: rows i, i + world_size, ... padded with copies of
   the first row, whose results are dropped (`Lockstep.shard`);
2. every number that decides how many passes run (rows per scoring pass, rows to generate for, tokens to
   generate) is agreed across processes (`Lockstep.most`);
3. a loop whose number of passes depends on the data (the best-first search's rounds) agrees before each
   pass whether any process still has one to run (`Lockstep.any`); a process with none runs a one-token
   pass (`idle_forward`);
4. generation runs with `synced_gpus`: each new token is a pass on every process until all are done.

With one process nothing is communicated, and the same code runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Lockstep:
    """The processes that evaluate together; `device` is where their collectives' tensors go."""

    rank: int = 0
    world_size: int = 1
    device: Any = "cpu"

    @property
    def synced(self) -> bool:
        return self.world_size > 1

    def most(self, n: int) -> int:
        """The largest `n` of all processes (an all-reduce; every process must call it)."""
        if not self.synced:
            return n
        import torch.distributed as dist

        value = torch.tensor([n], dtype=torch.long, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value.item())

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is true on any (an all-reduce)."""
        return self.most(int(flag)) > 0

    def shard(self, items: Sequence[T]) -> tuple[list[T], int]:
        """This process's rows and how many of them are real: rows rank, rank + world_size, ..., padded
        with copies of the first row to the length of the longest shard.

        >>> Lockstep(1, 2).shard([10, 11, 12]), Lockstep(0, 2).shard([10, 11, 12]), Lockstep(1, 3).shard([])
        (([11, 10], 1), ([10, 12], 2), ([], 0))
        """
        mine = list(items[self.rank :: self.world_size])
        longest = -(-len(items) // self.world_size)
        padding = [items[0]] * (longest - len(mine)) if longest > len(mine) else []
        return mine + padding, len(mine)


SOLO = Lockstep()


@torch.no_grad()
def idle_forward(model: Any) -> None:
    """A one-token forward pass whose result nobody reads: this process's share of the collectives of a
    pass the other processes run."""
    device = next(model.parameters()).device
    model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), use_cache=False, logits_to_keep=1)
