"""What a checkpoint holds. This module is the only one that builds checkpoint contents (a finished
model, or a resumable training state) and the only one that reads a training state back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import Config
from ..reproducibility import rng_state
from ..tasks import Task
from ..tasks.base import Splits
from .distributed import Peers, gather
from .loop import Accumulator, Precision
from .runs import RunDir


@dataclass
class Setup:
    """Everything a run trains with, built from its config by `train.setup`."""

    config: Config
    task: Task
    splits: Splits
    loaders: dict[str, DataLoader]
    preprocessing: dict[str, Any]  # fitted on the training split; travels with the weights
    model: nn.Module  # the task's module: its state_dict is what checkpoints hold
    network: nn.Module  # what trains: the model, wrapped in DDP and compiled when configured
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Precision
    device: torch.device
    peers: Peers


def model_payload(setup: Setup, kind: str = "model", **extra: Any) -> dict[str, Any]:
    """A checkpoint's contents: enough to rebuild the model of its task anywhere."""
    return {
        "kind": kind,
        "task": setup.config.task,
        "config": setup.config.to_dict(),
        "preprocessing": setup.preprocessing,
        "model_state": {k: v.detach().cpu() for k, v in setup.model.state_dict().items()},
        **extra,
    }


@dataclass
class TrainingState:
    """Where a run stands: position, history and the random states needed to continue it exactly.
    The data order needs no state of its own: the sampler derives it from the seed and the epoch."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in the current epoch
    history: list[dict[str, float]] = field(default_factory=list)
    totals: tuple[float, int, int] = (0.0, 0, 0)  # this rank's share of the epoch's sums so far
    rng: dict[str, Any] | None = None  # this rank's random states to restore (set when resumed)

    def save(self, run: RunDir, setup: Setup, totals: Accumulator) -> Path:
        """A resumable checkpoint in the run's directory; `totals` are the current epoch's sums so far.
        Every rank calls it (their random states and sums are gathered); rank 0 writes it."""
        payload = self.payload(setup, totals)
        path = run.checkpoint_path(self.epoch, self.batch)
        if setup.peers.main:
            run.save_checkpoint(path, payload, setup.config.output.keep_checkpoints)
        return path

    def payload(self, setup: Setup, totals: Accumulator) -> dict[str, Any]:
        return model_payload(
            setup,
            kind="training",
            epoch=self.epoch,
            batch=self.batch,
            history=self.history,
            totals=list(totals.sums()),  # summed over the ranks
            world_size=setup.peers.world_size,
            rng=gather(rng_state()),  # one entry per rank
            optimizer_state=setup.optimizer.state_dict(),
            scheduler_state=setup.scheduler.state_dict(),
            scaler_state=setup.precision.scaler.state_dict(),
        )

    @classmethod
    def restore(cls, setup: Setup, payload: dict[str, Any]) -> TrainingState:
        """Put the checkpoint's weights and optimizer back into `setup`; the state to continue from.
        The caller has checked that the checkpoint was written by as many ranks as there are now."""
        setup.model.load_state_dict(payload["model_state"])
        setup.optimizer.load_state_dict(payload["optimizer_state"])
        setup.scheduler.load_state_dict(payload["scheduler_state"])
        if setup.precision.scaler.is_enabled() and payload.get("scaler_state"):
            setup.precision.scaler.load_state_dict(payload["scaler_state"])
        rank, rngs = setup.peers.rank, payload["rng"]
        rngs = rngs if isinstance(rngs, list) else [rngs]  # checkpoints from before multi-process runs
        return cls(
            epoch=payload["epoch"],
            batch=payload["batch"],
            history=payload["history"],
            totals=tuple(payload["totals"]) if rank == 0 else (0.0, 0, 0),  # rank 0 carries the sums
            rng=rngs[rank],
        )
