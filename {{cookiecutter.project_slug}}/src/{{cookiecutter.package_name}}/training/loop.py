"""The inner loops: train on batches, score a split. One accumulator serves both, and its sums stay
on the device until they are read (one synchronisation per epoch, not per batch)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ..errors import UserError
from ..reproducibility import seed_worker
from ..tasks.base import Split
from .distributed import all_sum


@dataclass(frozen=True)
class Score:
    loss: float
    accuracy: float
    samples: int


class Accumulator:
    """Running cross-entropy and accuracy sums over batches."""

    def __init__(self, device: torch.device, sums: tuple[float, int, int] = (0.0, 0, 0)) -> None:
        loss_sum, correct, self.seen = sums
        self.device = device
        self.loss_sum = torch.tensor(float(loss_sum), device=device)
        self.correct = torch.tensor(int(correct), dtype=torch.long, device=device)

    def add(self, logits: torch.Tensor, targets: torch.Tensor, mean_loss: torch.Tensor) -> None:
        """One batch. `mean_loss` must carry no graph; argmax never does. In place and few kernels:
        on a small model these sums are a visible share of a training step."""
        self.loss_sum.add_(mean_loss, alpha=len(targets))
        self.correct.add_((logits.argmax(dim=1) == targets).sum())
        self.seen += len(targets)

    def sums(self) -> tuple[float, int, int]:
        """Plain numbers summed over every rank (collective: all ranks call it together)."""
        seen = torch.tensor(float(self.seen), dtype=torch.float64, device=self.correct.device)
        packed = all_sum(torch.stack([self.loss_sum.double(), self.correct.double(), seen]))
        loss_sum, correct, seen = packed.tolist()
        return loss_sum, int(correct), int(seen)

    def score(self) -> Score:
        loss_sum, correct, seen = self.sums()
        return Score(loss_sum / seen, correct / seen, seen)


class Precision:
    """Autocast to the configured dtype; fp16 also scales the loss so small gradients survive.
    The weights stay fp32, so checkpoints are the same whatever precision trained them."""

    def __init__(self, name: str, device: torch.device) -> None:
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError(
                f"precision=bf16 needs a GPU with bfloat16 (compute capability 8.0+, e.g. A100, H100); "
                f"{torch.cuda.get_device_name(device)} has none: use precision=fp16"
            )
        self.name, self.device_type = name, device.type
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)  # fp32: no autocast
        self.scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)


def make_loader(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Training (`shuffle`): a DistributedSampler seeded by `seed` and the epoch hands each of the
    `world_size` ranks its share, with `batch_size` split evenly among them. Scoring: each rank
    scores every `world_size`-th sample, so the summed metrics count every sample once."""
    dataset = TensorDataset(torch.from_numpy(split.inputs), torch.from_numpy(split.labels))
    if shuffle:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    else:
        sampler = range(rank, len(dataset), world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size // world_size if shuffle else batch_size,
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        worker_init_fn=seed_worker,
    )


def train_batches(
    model: torch.nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    totals: Accumulator,
    after_batch: Callable[[], bool] = lambda: False,
) -> int:
    """Train on `batches` until they run out or `after_batch()` asks to stop; the batches trained."""
    model.train()
    device, scaler, done = totals.device, precision.scaler, 0
    for inputs, targets in batches:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(inputs)
            loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        totals.add(logits, targets, loss.detach())
        done += 1
        if after_batch():
            break
    return done


@torch.inference_mode()
def score(model: torch.nn.Module, loader: DataLoader, device: torch.device, precision: Precision) -> Score:
    """Loss and accuracy over the loader's samples, summed over every rank's share."""
    model.eval()
    totals = Accumulator(device)
    for inputs, targets in loader:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(inputs)
            loss = F.cross_entropy(logits, targets)
        totals.add(logits, targets, loss)
    return totals.score()
