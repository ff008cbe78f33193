"""One training process among several, as torchrun starts them.

torchrun (`python -m torch.distributed.run`) sets RANK, WORLD_SIZE and LOCAL_RANK for every process
it starts; `process_group` turns them into a process group (NCCL between GPUs, gloo on the CPU). Outside
torchrun a run is a group of one, and every collective here returns its input untouched.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..device import resolve_device
from ..errors import UserError


@dataclass(frozen=True)
class Peers:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun: a process group, even of one
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Rank 0 alone writes the run directory and reports progress."""
        return self.rank == 0

    @classmethod
    def alone(cls, device_spec: str) -> Peers:
        return cls(device=resolve_device(device_spec))

    @classmethod
    def from_environment(cls, device_spec: str) -> Peers:
        """This process as torchrun describes it; each process of a node takes its local rank's GPU."""
        if "WORLD_SIZE" not in os.environ:
            return cls.alone(device_spec)
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = resolve_device(device_spec, quiet=local_rank != 0)
        return cls(
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            local_rank=local_rank,
            launched=True,
            device=torch.device("cuda", local_rank) if device.type == "cuda" else device,
        )


@contextmanager
def process_group(device_spec: str) -> Iterator[Peers]:
    """This process's place in its group, joined for the duration (NCCL on GPUs, gloo on CPUs)."""
    peers = Peers.from_environment(device_spec)
    if peers.launched:
        if peers.device.type == "cuda":
            torch.cuda.set_device(peers.device)
        dist.init_process_group(backend="nccl" if peers.device.type == "cuda" else "gloo")
    try:
        yield peers
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def decide(peers: Peers, choose: Callable[[], Any]) -> Any:
    """`choose()` runs on rank 0 alone and every rank gets its answer, or its one-line error."""
    if not active():
        return choose()
    outcome: tuple[Any, str | None] = (None, None)
    if peers.main:
        try:
            outcome = (choose(), None)
        except UserError as err:
            outcome = (None, str(err))
    value, error = from_main(outcome)
    if error is not None:
        shared = UserError(error)
        shared.shared = True
        raise shared
    return value


def launch_id() -> str | None:
    """What names this launch across restarts: the SLURM job (kept when it is requeued), else
    torchrun's rendezvous id (kept when torchrun restarts its workers)."""
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    rdzv = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return None if rdzv == "none" else f"torchrun-{rdzv}"


def restarts(variable: str) -> int:
    """A launcher's restart count (TORCHELASTIC_RESTART_COUNT, SLURM_RESTART_COUNT); 0 when unset."""
    return int(os.environ.get(variable) or 0)


def relaunched() -> bool:
    """This launch ran before: torchrun restarted its workers, or SLURM requeued the job."""
    return restarts("TORCHELASTIC_RESTART_COUNT") > 0 or restarts("SLURM_RESTART_COUNT") > 0


def launch_record(peers: Peers) -> dict[str, Any]:
    """For the manifest: how many processes trained, and what launched them."""
    return {
        "world_size": peers.world_size,
        "nodes": int(os.environ.get("GROUP_WORLD_SIZE", 1)),
        "id": launch_id(),
        "torchrun_restart": restarts("TORCHELASTIC_RESTART_COUNT"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart": restarts("SLURM_RESTART_COUNT"),
    }


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel in a group (it averages the gradients and starts every rank from
    rank 0's weights); the model itself otherwise. Buffers (batch-norm statistics) are not sent
    before every step: training uses each batch's own statistics, so `share_buffers` once an epoch
    gives the same model for a fraction of the messages."""
    if not active():
        return model
    device_ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def share_buffers(model: nn.Module) -> None:
    """Rank 0's buffers on every rank, before scoring or saving (what DDP would send every step)."""
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is True on one: ranks must stop at the same batch."""
    if not active():
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def from_main(value: Any) -> Any:
    """Rank 0's value, on every rank (a decision made once: which run, which checkpoint)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's value, in rank order, on every rank."""
    if not active():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def barrier() -> None:
    if active():
        dist.barrier()
