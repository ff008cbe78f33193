"""From inputs to predictions, shared by `infer` and the server: files become samples of the task's
input spec (.npy for every task, the task's own file types beside it), and a saved model predicts
them in batches."""

from __future__ import annotations

import errno
import io
import math
import stat
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .checkpoint import load_model
from .device import resolve_device
from .errors import UserError
from .tasks import Task
from .tasks.base import MAX_FILE_BYTES, InputSpec

NPY_MAGIC = b"\x93NUMPY"
STDIN = "<stdin>"
BATCH_SIZE = 1024  # samples in one forward pass, however many a file holds


def file_types(task: Task) -> str:
    return ", ".join([".npy", *task.file_types])


def decode(data: bytes, name: str, task: Task, suffix: str | None = None) -> np.ndarray:
    """One file's bytes as the array it holds: .npy by suffix or by its magic bytes, else whatever
    the task's reader makes of it (`suffix` None: standard input or an upload without a known type)."""
    if suffix == ".npy" or data.startswith(NPY_MAGIC):
        return read_npy(data, name, task.input_spec)
    return task.read_file(data, name)


def read_npy(data: bytes, name: str, spec: InputSpec) -> np.ndarray:
    """A .npy array, its header checked before anything is allocated: a plain array of numbers
    (never pickled objects) of a shape the input spec accepts, within its limit, and exactly the
    bytes the header promises. No other reader of .npy (`np.load`) is used."""
    from numpy.lib import format as npy

    handle = io.BytesIO(data)
    try:
        version = npy.read_magic(handle)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version[0]}.{version[1]}, which only structured arrays need")
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a header written by Python 2 still reads
            shape, fortran_order, dtype = read_header(handle)
    except ValueError as err:
        raise UserError(f"{name}: not a readable .npy array ({str(err)[:120]})") from None
    spec.check_array(shape, dtype, name)
    needed, held = math.prod(shape) * dtype.itemsize, len(data) - handle.tell()
    if held != needed:
        raise UserError(
            f"{name}: not a readable .npy array (its header promises {shape} {dtype}, {needed} bytes, "
            f"but {held} follow)"
        )
    values = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=handle.tell())
    return values.reshape(shape, order="F" if fortran_order else "C")


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
        return named_samples(read_limited(sys.stdin.buffer, STDIN), STDIN, task)
    path = Path(path)
    check_regular_file(path, task)
    suffix = path.suffix.lower()
    if suffix not in (".npy", *task.file_types):
        raise UserError(f"{path}: unsupported file type {suffix or '(none)'}; use {file_types(task)} or -")
    try:
        with path.open("rb") as handle:
            data = read_limited(handle, str(path))
    except OSError as err:  # unreadable (permissions), or replaced since it was checked
        raise UserError(f"{path}: cannot be read ({err.strerror or err.__class__.__name__})") from None
    return named_samples(data, str(path), task, suffix)


def check_regular_file(path: Path, task: Task) -> None:
    """A one-line reason why `path` is not a file to read: missing, a directory, a symlink loop,
    a device or pipe (which could block or never end)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file{' (a broken symlink)' if path.is_symlink() else ''}") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserError(f"{path}: is a symlink loop; it cannot be resolved to a file") from None
        raise UserError(f"{path}: cannot be read ({err.strerror or err.__class__.__name__})") from None
    if stat.S_ISDIR(info.st_mode):
        example = Path(path, f"*{next(iter(task.file_types), '.npy')}")
        raise UserError(f"{path}: is a directory; name the files in it (e.g. {example})")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path}: is not a regular file (a device, pipe or socket); use - for a stream")
    if info.st_size > MAX_FILE_BYTES:
        raise too_large(str(path))


def read_limited(handle: BinaryIO, name: str) -> bytes:
    """All of a file or stream, refused once it grows past MAX_FILE_BYTES (never read in full)."""
    data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise too_large(name)
    return data


def too_large(name: str) -> UserError:
    return UserError(f"{name}: over {MAX_FILE_BYTES:,} bytes, the limit for one input; split it")


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
        inputs = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
        probabilities = torch.cat(
            [
                torch.softmax(self.model(batch.to(self.device)), dim=1).cpu()
                for batch in inputs.split(BATCH_SIZE)
            ]
        )
        confidence, labels = probabilities.max(dim=1)
        names = self.task.class_names
        return [
            Prediction(int(label), names[int(label)], float(conf), probs.tolist())
            for label, conf, probs in zip(labels, confidence, probabilities, strict=True)
        ]
