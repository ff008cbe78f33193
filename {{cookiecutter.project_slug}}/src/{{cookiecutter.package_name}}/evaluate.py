"""Scoring a model on a data split; `evaluate` recomputes the test metrics of a saved model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import load_model
from .data import load_splits, make_loader
from .device import resolve_device


@dataclass(frozen=True)
class Score:
    loss: float
    accuracy: float
    samples: int


@torch.inference_mode()
def score(model: torch.nn.Module, loader, device: torch.device) -> Score:
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = model(inputs)
        loss_sum += F.cross_entropy(logits, targets, reduction="sum")
        correct += (logits.argmax(dim=1) == targets).sum()
        seen += len(targets)
    return Score(loss=loss_sum.item() / seen, accuracy=correct.item() / seen, samples=seen)


def evaluate(model_path: str | Path, device_spec: str = "auto") -> dict:
    """Test-split metrics of a saved model, on the split it was trained with."""
    model, payload = load_model(model_path)  # a bad file is reported before any device question
    device = resolve_device(device_spec)
    model.to(device)
    config = payload["config"]
    splits = load_splits(config["seed"], config["data"]["val_fraction"], config["data"]["test_fraction"])
    loader = make_loader(splits.test, config["data"]["batch_size"], shuffle=False, seed=config["seed"])
    result = score(model, loader, device)
    return {
        "model": str(model_path),
        "test_accuracy": result.accuracy,
        "test_loss": result.loss,
        "test_samples": result.samples,
        "device": str(device),
    }
