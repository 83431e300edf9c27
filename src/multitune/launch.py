"""`python -m multitune.launch torchrun ARGS...` (or `... accelerate launch ARGS...`): the launcher, run
in this process, with an exit status a scheduler can requeue on.

`multitune train` exits 75 (EXIT_PREEMPTED) after a SIGTERM has made every process checkpoint the same
step. Under a launcher that status does not reach the shell: torch's elastic agent (torchrun, and
`accelerate launch`, which runs it) reports any worker that exits non-zero as a failure and exits 1,
whatever the worker's status; two torchrun nodes on loopback both returned 1. This runs the same launcher
(the same arguments, the same agent) and translates what the agent knows:

- failed workers exited 75 (the others, ended by the agent's SIGTERM once the first one exited, -15), or
  the launcher itself got SIGTERM (what SLURM's `--signal` and most schedulers send; the agent forwards
  it to the workers, which checkpoint): exit 75, requeue;
- any other failure keeps the launcher's own exit status (1): do not requeue a crash.

The scripts in scripts/ launch through this and requeue on 75. Give the workers time to checkpoint:
`TORCH_ELASTIC_SHUTDOWN_TIMEOUT` (seconds, default 30) is how long the agent waits after forwarding a
signal before it kills them.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from multitune.errors import EXIT_PREEMPTED

LAUNCHERS = ("torchrun", "accelerate")


def preempted(exit_codes: Sequence[int]) -> bool:
    """Whether failed workers' exit codes say the run stopped on a signal after its checkpoint: some
    exited 75, the others too or were ended by SIGTERM (-15). The checkpoint is complete before any
    process exits, and as soon as one exits the agent sends SIGTERM to the rest of its node, which kills
    those still closing down.

    >>> preempted([75, 75]), preempted([75, -15]), preempted([75, 1]), preempted([75, -9]), preempted([-15])
    (True, True, False, False, False)
    """
    return EXIT_PREEMPTED in exit_codes and all(c in (EXIT_PREEMPTED, -signal.SIGTERM) for c in exit_codes)


def run(argv: Sequence[str]) -> int:
    """Run `torchrun ARGS` or `accelerate launch ARGS` in this process; returns the exit status."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if not argv or argv[0] not in LAUNCHERS or (argv[0] == "accelerate" and argv[1:2] != ["launch"]):
        print("usage: python -m multitune.launch torchrun ARGS... | accelerate launch ARGS...", file=sys.stderr)
        return 2
    try:
        _launch(list(argv))
    except ChildFailedError as e:
        codes = [failure.exitcode for failure in e.failures.values()]
        if preempted(codes):
            print(f"multitune.launch: the processes stopped after a checkpoint (exit codes {sorted(set(codes))}): "
                  f"exit {EXIT_PREEMPTED}, resume by running the same command", file=sys.stderr)
            return EXIT_PREEMPTED
        print(f"multitune.launch: processes failed with exit codes {sorted(set(codes))}: exit 1", file=sys.stderr)
        return 1
    except SignalException as e:
        if e.sigval == signal.SIGTERM:
            print(f"multitune.launch: SIGTERM, forwarded to the processes: exit {EXIT_PREEMPTED}", file=sys.stderr)
            return EXIT_PREEMPTED
        return 128 + int(e.sigval)
    return 0


def _launch(argv: list[str]) -> None:
    if argv[0] == "torchrun":
        from torch.distributed.run import parse_args
        from torch.distributed.run import run as torchrun

        torchrun(parse_args(argv[1:]))
        return
    from accelerate.commands.launch import launch_command, launch_command_parser

    launch_command(launch_command_parser().parse_args(argv[2:]))


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
