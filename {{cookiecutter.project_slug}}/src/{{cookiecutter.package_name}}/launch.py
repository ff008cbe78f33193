"""`train --nproc N`: start the training processes with torchrun, after the checks that should fail
once, here, instead of in every process (or after a GPU was allocated for nothing)."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .config import Config
from .errors import UsageError, UserError

PACKAGE = __package__


def check(config: Config, args: argparse.Namespace) -> None:
    """One-line refusals before any process starts."""
    config.check_processes(args.nproc * args.nnodes)
    if config.device.startswith("cuda:") and args.nproc > 1:
        raise UsageError(
            f"device={config.device} names one GPU; with NPROC each process takes its own: device=cuda"
        )
    if (args.nnodes > 1 or args.rdzv_endpoint) and not (args.rdzv_endpoint and args.rdzv_id):
        raise UsageError(
            "a rendezvous of several nodes needs RDZV_ENDPOINT=host:port (on the first node) "
            "and RDZV_ID=<job name>, the same on every node"
        )
    if config.device != "cpu":
        from .device import installed_build
        from .gpu.checks import process_problem
        from .variants import project_cuda

        problem = process_problem(project_cuda() or installed_build(), args.nproc)
        if problem:
            raise UserError(problem)


def torchrun_arguments(args: argparse.Namespace) -> list[str]:
    """torchrun's (`python -m torch.distributed.run`) arguments, starting `train` in every process."""
    command = ["--nproc-per-node", str(args.nproc)]
    if args.nnodes == 1 and not args.rdzv_endpoint:
        command.append("--standalone")
    else:
        command += ["--nnodes", str(args.nnodes), "--rdzv-backend", "c10d"]
        command += ["--rdzv-endpoint", args.rdzv_endpoint, "--rdzv-id", args.rdzv_id]
        if args.node_rank is not None:  # c10d assigns ranks itself; node 0 hosts the rendezvous
            command += ["--rdzv-conf", f"is_host={'true' if args.node_rank == 0 else 'false'}"]
    if args.max_restarts:
        command += ["--max-restarts", str(args.max_restarts)]
    command += ["-m", PACKAGE, "train", "--config", args.config]
    command += ["--resume", args.resume] if args.resume else []
    command += ["--no-progress"] if args.no_progress else []
    return command + list(args.overrides)


def launch(config: Config, args: argparse.Namespace) -> int:
    """Check, then run torchrun in this process (signals from make, SLURM or a terminal reach it, and
    it forwards them to the training processes); its failures end in one line, not a traceback."""
    check(config, args)
    if args.resume:
        from .training.runs import find_resumable

        find_resumable(config.output.runs_dir, args.resume)  # a wrong RESUME: one line, not one per process
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpus // args.nproc)))  # no oversubscription
    # Restarted workers must not share the rendezvous store: they would read the dead group's
    # addresses and fail to connect (pytorch/pytorch#135712). Without restarts they do share it: rank 0
    # then binds no port of its own, which another socket can take first (pytorch/pytorch#85604).
    if args.max_restarts:
        os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    arguments = torchrun_arguments(args)
    print("launching: torchrun " + " ".join(arguments), file=sys.stderr, flush=True)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(arguments))
    except SignalException as stop:
        raise Stopped(stop.sigval) from None
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        raise UserError(f"training process {rank} failed ({how}); its error is above") from None
    return 0


class Stopped(UserError):
    def __init__(self, signum: int) -> None:
        super().__init__(
            f"torchrun stopped by {signal.Signals(signum).name}; it passed it on to the training processes"
        )
        self.exit_code = 128 + signum
