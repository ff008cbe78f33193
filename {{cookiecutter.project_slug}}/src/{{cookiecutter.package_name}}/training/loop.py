"""The inner loops: train on batches, score a split. One accumulator serves both, and its sums stay
on the device until they are read (one synchronisation per epoch, not per batch)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ..reproducibility import seed_worker
from ..tasks.base import Split


@dataclass(frozen=True)
class Score:
    loss: float
    accuracy: float
    samples: int


class Accumulator:
    """Running cross-entropy and accuracy sums over batches."""

    def __init__(self, device: torch.device, sums: tuple[float, int, int] = (0.0, 0, 0)) -> None:
        loss_sum, correct, self.seen = sums
        self.loss_sum = torch.tensor(float(loss_sum), device=device)
        self.correct = torch.tensor(int(correct), dtype=torch.long, device=device)

    def add(self, logits: torch.Tensor, targets: torch.Tensor, mean_loss: torch.Tensor) -> None:
        """One batch. `mean_loss` must carry no graph; argmax never does. In place and few kernels:
        on a small model these sums are a visible share of a training step."""
        self.loss_sum.add_(mean_loss, alpha=len(targets))
        self.correct.add_((logits.argmax(dim=1) == targets).sum())
        self.seen += len(targets)

    def sums(self) -> tuple[float, int, int]:
        """Plain numbers, for a checkpoint taken mid-epoch."""
        return self.loss_sum.item(), int(self.correct.item()), self.seen

    def score(self) -> Score:
        return Score(self.loss_sum.item() / self.seen, self.correct.item() / self.seen, self.seen)


def make_loader(
    split: Split, batch_size: int, *, shuffle: bool, seed: int, num_workers: int = 0
) -> DataLoader:
    dataset = TensorDataset(torch.from_numpy(split.inputs), torch.from_numpy(split.labels))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        worker_init_fn=seed_worker,
    )


def train_batches(
    model: torch.nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    totals: Accumulator,
    after_batch: Callable[[], bool] = lambda: False,
) -> int:
    """Train on `batches` until they run out or `after_batch()` asks to stop; the batches trained."""
    model.train()
    done = 0
    for inputs, targets in batches:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = model(inputs)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        totals.add(logits, targets, loss.detach())
        done += 1
        if after_batch():
            break
    return done


@torch.inference_mode()
def score(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> Score:
    model.eval()
    totals = Accumulator(device)
    for inputs, targets in loader:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = model(inputs)
        totals.add(logits, targets, F.cross_entropy(logits, targets))
    return totals.score()
