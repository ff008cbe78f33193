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
from .loop import Accumulator
from .runs import RunDir


@dataclass
class Setup:
    """Everything a run trains with, built from its config by `train.setup`."""

    config: Config
    task: Task
    splits: Splits
    loaders: dict[str, DataLoader]
    preprocessing: dict[str, Any]  # fitted on the training split; travels with the weights
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device


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
    """Where a run stands: position, history and the random states needed to continue it exactly."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in the current epoch
    history: list[dict[str, float]] = field(default_factory=list)
    totals: tuple[float, int, int] = (0.0, 0, 0)  # the current epoch's sums when it was saved mid-way
    loader_rng: torch.Tensor | None = None  # the shuffling generator at the start of the current epoch
    rng: dict[str, Any] | None = None  # global random states to restore (set when resumed)

    def save(self, run: RunDir, setup: Setup, totals: Accumulator) -> Path:
        """A resumable checkpoint in the run's directory; `totals` are the current epoch's sums so far."""
        return run.save_checkpoint(self.payload(setup, totals), setup.config.output.keep_checkpoints)

    def payload(self, setup: Setup, totals: Accumulator) -> dict[str, Any]:
        return model_payload(
            setup,
            kind="training",
            epoch=self.epoch,
            batch=self.batch,
            history=self.history,
            totals=list(totals.sums()),
            loader_rng=self.loader_rng,
            rng=rng_state(),
            optimizer_state=setup.optimizer.state_dict(),
            scheduler_state=setup.scheduler.state_dict(),
        )

    @classmethod
    def restore(cls, setup: Setup, payload: dict[str, Any]) -> TrainingState:
        """Put the checkpoint's weights and optimizer back into `setup`; the state to continue from."""
        setup.model.load_state_dict(payload["model_state"])
        setup.optimizer.load_state_dict(payload["optimizer_state"])
        setup.scheduler.load_state_dict(payload["scheduler_state"])
        return cls(
            epoch=payload["epoch"],
            batch=payload["batch"],
            history=payload["history"],
            totals=tuple(payload["totals"]),
            loader_rng=payload["loader_rng"],
            rng=payload["rng"],
        )
