"""The training loop: seeded, device-agnostic, one run directory per run."""

from __future__ import annotations

import json
import random
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from .checkpoint import atomic_write_bytes, save_checkpoint
from .config import Config
from .data import load_splits, make_loader
from .device import resolve_device
from .evaluate import score
from .model import build_model
from .plots import plot_history


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    model_path: Path
    metrics: dict


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_one_epoch(
    model: torch.nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    on_batch: Callable[[int], object] | None = None,
) -> tuple[float, float]:
    """One pass over `loader`; returns (mean loss, accuracy) with a single device sync at the end."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = model(inputs)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(targets)
        correct += (logits.detach().argmax(dim=1) == targets).sum()
        seen += len(targets)
        if on_batch is not None:
            on_batch(1)
    return loss_sum.item() / seen, correct.item() / seen


def new_run_dir(runs_dir: Path) -> Path:
    """runs/<UTC timestamp>-<random suffix>: sorts by time, never collides."""
    run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True)
    return run_dir


def promote(checkpoint: Path, model_path: Path) -> None:
    """Publish a run's checkpoint as the project's model without a half-written file in between."""
    with checkpoint.open("rb") as source:
        atomic_write_bytes(model_path, lambda handle: shutil.copyfileobj(source, handle))


def train(config: Config, *, progress: bool = True) -> TrainResult:
    started = time.perf_counter()
    device = resolve_device(config.device)
    seed_everything(config.seed)
    splits = load_splits(config.seed, config.data.val_fraction, config.data.test_fraction)
    loaders = {
        name: make_loader(
            getattr(splits, name),
            config.data.batch_size,
            shuffle=name == "train",
            seed=config.seed,
            num_workers=config.data.num_workers,
        )
        for name in ("train", "val", "test")
    }
    model = build_model(config.model).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.optim.epochs)

    run_dir = new_run_dir(Path(config.output.runs_dir))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    history = []
    total = config.optim.epochs * len(loaders["train"])
    # A live bar on a terminal; one line per epoch in logs (CI, containers), where a bar is noise.
    live = progress and sys.stderr.isatty()
    with tqdm(total=total, unit="batch", desc="train", disable=not live, dynamic_ncols=True) as bar:
        for epoch in range(1, config.optim.epochs + 1):
            train_loss, train_acc = train_one_epoch(model, loaders["train"], optimizer, device, bar.update)
            val = score(model, loaders["val"], device)
            scheduler.step()
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "train_accuracy": train_acc,
                    "val_loss": val.loss,
                    "val_accuracy": val.accuracy,
                }
            )
            status = dict(loss=f"{train_loss:.3f}", acc=f"{train_acc:.3f}", val_acc=f"{val.accuracy:.3f}")
            if live:
                bar.set_postfix(epoch=epoch, **status)
            elif progress:
                fields = " ".join(f"{key} {value}" for key, value in status.items())
                print(f"epoch {epoch}/{config.optim.epochs} {fields}", file=sys.stderr)

    test = score(model, loaders["test"], device)
    metrics = {
        "test_accuracy": test.accuracy,
        "test_loss": test.loss,
        "val_accuracy": history[-1]["val_accuracy"],
        "train_accuracy": history[-1]["train_accuracy"],
        "epochs": config.optim.epochs,
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 2),
        "history": history,
    }
    checkpoint = run_dir / "checkpoint.pt"
    save_checkpoint(checkpoint, model, config, {k: v for k, v in metrics.items() if k != "history"})
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_history(history, run_dir / "curves.png")
    model_path = Path(config.output.model_path)
    promote(checkpoint, model_path)
    return TrainResult(run_dir=run_dir, model_path=model_path, metrics=metrics)
