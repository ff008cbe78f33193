"""From inputs to predictions, shared by `infer` and the server: files become samples of the task's
input spec (.npy for every task, the task's own file types beside it), and a saved model predicts
them in batches."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_model
from .device import resolve_device
from .errors import UserError
from .tasks import Task

NPY_MAGIC = b"\x93NUMPY"
STDIN = "<stdin>"


def file_types(task: Task) -> str:
    return ", ".join([".npy", *task.file_types])


def decode(data: bytes, name: str, task: Task, suffix: str | None = None) -> np.ndarray:
    """One file's bytes as the array it holds: .npy by suffix or by its magic bytes, else whatever
    the task's reader makes of it (`suffix` None: standard input or an upload without a known type)."""
    if suffix == ".npy" or data.startswith(NPY_MAGIC):
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise UserError(f"{name}: not a readable .npy array ({err})") from None
    return task.read_file(data, name)


def named_samples(
    data: bytes, name: str, task: Task, suffix: str | None = None
) -> list[tuple[str, np.ndarray]]:
    """One file's samples, checked against the input spec: one sample keeps the file's name, a
    batch gives `name[i]`."""
    array = decode(data, name, task, suffix)
    spec = task.input_spec
    samples = spec.validate(array, name)
    if np.shape(array) in (spec.shape, (spec.size,)):
        return [(name, samples[0])]
    return [(f"{name}[{i}]", sample) for i, sample in enumerate(samples)]


def read_inputs(path: str | Path, task: Task) -> list[tuple[str, np.ndarray]]:
    """A file of a type the task reads, or `-` for standard input (told apart by its first bytes)."""
    if str(path) == "-":
        return named_samples(sys.stdin.buffer.read(), STDIN, task)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".npy", *task.file_types):
        raise UserError(f"{path}: unsupported file type {suffix or '(none)'}; use {file_types(task)} or -")
    return named_samples(path.read_bytes(), str(path), task, suffix)


@dataclass(frozen=True)
class Prediction:
    label: int
    name: str  # the class name
    confidence: float
    probabilities: list[float]


class Predictor:
    """A saved model, on its device, predicting batches of (N, *input_spec.shape) samples."""

    def __init__(self, model_path: str | Path, device: str = "auto", task: str | None = None) -> None:
        loaded = load_model(model_path, task)  # a bad file first, then the device
        self.task_name, self.task, self.model = loaded.task_name, loaded.task, loaded.model
        self.device = resolve_device(device)
        self.model.to(self.device)

    @torch.inference_mode()
    def predict(self, samples: np.ndarray) -> list[Prediction]:
        inputs = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).to(self.device)
        probabilities = torch.softmax(self.model(inputs), dim=1).cpu()
        confidence, labels = probabilities.max(dim=1)
        names = self.task.class_names
        return [
            Prediction(int(label), names[int(label)], float(conf), probs.tolist())
            for label, conf, probs in zip(labels, confidence, probabilities, strict=True)
        ]
