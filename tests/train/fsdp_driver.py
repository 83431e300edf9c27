"""Run by test_fsdp.py under torchrun: `multitune train ARGS...`, exactly as the command line runs it, with
test-only faults chosen by environment variables:

    MULTITUNE_TEST_OLD_EVAL=1             evaluation shards rows as it did before lockstep evaluation: rows
                                          rank, rank + world_size, ... unpadded, batch counts and answer
                                          lengths decided by each process alone, generation with
                                          transformers' default for synced_gpus (what the lockstep rules of
                                          eval/lockstep.py replaced)
    MULTITUNE_TEST_SIGNAL=NAME:RANK:STEP  process RANK sends itself signal NAME as it starts optimizer step
                                          STEP (1-based, counted from this launch)
    MULTITUNE_TEST_PG_TIMEOUT=SECONDS     a collective that waits longer fails (torch's default: 30 min),
                                          so a hang ends as an error instead of holding the test
"""

import datetime
import os
import signal
import sys

import torch.distributed

from multitune.cli import main
from multitune.eval import lockstep
from multitune.train import loop


def old_evaluation() -> None:
    lockstep.Lockstep.shard = lambda self, items: (list(items[self.rank :: self.world_size]),
                                                   len(items[self.rank :: self.world_size]))
    lockstep.Lockstep.most = lambda self, n: n
    lockstep.Lockstep.synced = property(lambda self: None)  # None: transformers decides, as before


def signal_at(name: str, rank: int, step: int) -> None:
    real, calls = loop.train_step, {"n": 0}

    def train_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step and int(os.environ["RANK"]) == rank:
            os.kill(os.getpid(), getattr(signal, name))
        return real(*args, **kwargs)

    loop.train_step = train_step


def collective_timeout(seconds: float) -> None:
    real = torch.distributed.init_process_group

    def init_process_group(*args, **kwargs):
        return real(*args, **{**kwargs, "timeout": datetime.timedelta(seconds=seconds)})

    torch.distributed.init_process_group = init_process_group


if os.environ.get("MULTITUNE_TEST_PG_TIMEOUT"):
    collective_timeout(float(os.environ["MULTITUNE_TEST_PG_TIMEOUT"]))
if os.environ.get("MULTITUNE_TEST_OLD_EVAL"):
    old_evaluation()
if os.environ.get("MULTITUNE_TEST_SIGNAL"):
    sig, at_rank, at_step = os.environ["MULTITUNE_TEST_SIGNAL"].split(":")
    signal_at(sig, int(at_rank), int(at_step))
sys.exit(main(["train", *sys.argv[1:]]))
