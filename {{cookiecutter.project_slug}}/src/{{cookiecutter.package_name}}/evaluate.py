"""`evaluate`: the test metrics of a saved model, recomputed on the split it was trained with."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import load_model
from .device import resolve_device
from .training.loop import Precision, make_loader, score


def evaluate(model_path: str | Path, device_spec: str = "auto", task: str | None = None) -> dict:
    loaded = load_model(model_path, task)  # a bad file is reported before any device question
    device = resolve_device(device_spec)
    config = loaded.payload["config"]
    data = config["data"]
    test = loaded.task.load_splits(config["seed"], data["val_fraction"], data["test_fraction"]).test
    result = score(
        loaded.model.to(device),
        make_loader(test, data["batch_size"], shuffle=False, seed=config["seed"]),
        device,
        Precision("fp32", device),  # whatever precision trained it: fp32 is the reference
    )
    return {
        "model": str(model_path),
        "task": loaded.task_name,
        "test_accuracy": result.accuracy,
        "test_loss": result.loss,
        "test_samples": result.samples,
        "device": str(device),
    }
