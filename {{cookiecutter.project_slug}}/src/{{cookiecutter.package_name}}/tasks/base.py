"""The contract between a task (data, model, inputs, labels) and the machinery that trains, checks,
evaluates, serves and ships it.

A task is a module in this package that defines `TASK`, an object with the members of `Task`. The
machinery gives it runs, manifests, checkpoints and resume, evaluation, `infer`, the HTTP server
(its request validation and OpenAPI schema come from `input_spec`), containers and GPU checks.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch import nn

from ..errors import UserError


@dataclass(frozen=True)
class InputSpec:
    """One sample as the model takes it: shape and value range. Every check of inputs (`infer`'s
    arrays, the server's JSON), the server's schema and the error messages derive from it."""

    shape: tuple[int, ...]
    low: float | None = None  # None: unbounded
    high: float | None = None
    description: str = ""  # what the values mean, for /docs and `tasks`
    names: tuple[str, ...] = ()  # optional names of the last dimension (a CSV header)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def shape_text(self) -> str:
        return "x".join(map(str, self.shape)) if len(self.shape) > 1 else f"{self.size}-value"

    def sample_text(self) -> str:
        if len(self.shape) > 1:
            return f"an {self.shape_text()} nested list of numbers"
        return f"a list of {self.size} numbers"

    def range_text(self) -> str:
        """ "in [0, 16]", ">= 0", "<= 1" or "finite"."""
        if self.low is not None and self.high is not None:
            return f"in [{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f">= {self.low:g}"
        return f"<= {self.high:g}" if self.high is not None else "finite"

    def accepted_shapes(self) -> str:
        one, flat = str(self.shape), f"({self.size},)"
        if len(self.shape) == 1:
            return f"{one} or (N, {self.size})"
        return f"{one}, (N, {one[1:-1]}), {flat} or (N, {self.size})"

    def validate(self, array: Any, source: str) -> np.ndarray:
        """One sample or a batch, nested or flat, in range -> (N, *shape) float32."""
        array = np.asarray(array)
        if array.dtype.kind not in "biuf":
            raise UserError(f"{source}: expected numbers, got an array of {array.dtype}")
        singles = {self.shape, (self.size,)}
        if array.shape not in singles and array.shape[1:] not in singles:
            raise UserError(f"{source}: shape {array.shape} is not {self.accepted_shapes()}")
        array = array.reshape(-1, *self.shape).astype(np.float64)
        if len(array) == 0:
            raise UserError(f"{source}: the array holds no samples")
        if not np.isfinite(array).all():
            raise UserError(f"{source}: contains NaN or infinite values")
        low, high = self.low, self.high
        if (low is not None and array.min() < low) or (high is not None and array.max() > high):
            raise UserError(f"{source}: values must be {self.range_text()} (the training scale)")
        if np.abs(array).max() > np.finfo(np.float32).max:
            raise UserError(f"{source}: values beyond float32's range")
        return array.astype(np.float32)

    def from_json(self, inputs: Any, source: str = "inputs") -> np.ndarray:
        """A JSON list of samples, each a nested list of numbers of exactly `shape`."""
        expected = f"{source} must be a list of samples, each {self.sample_text()}"
        if not isinstance(inputs, list) or _has_bool(inputs):
            raise UserError(expected)
        try:
            array = np.array(inputs, dtype=np.float64)
        except (ValueError, TypeError) as err:  # ragged nesting, strings, nulls
            raise UserError(expected) from err
        if array.shape[1:] != self.shape:
            raise UserError(expected)
        return self.validate(array, source)

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of one sample: nested arrays of numbers within the range."""
        schema: dict[str, Any] = {"type": "number"}
        if self.low is not None:
            schema["minimum"] = self.low
        if self.high is not None:
            schema["maximum"] = self.high
        for size in reversed(self.shape):
            schema = {"type": "array", "minItems": size, "maxItems": size, "items": schema}
        return schema


def _has_bool(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_bool(item) for item in value)
    return isinstance(value, bool)


@dataclass(frozen=True)
class Split:
    inputs: np.ndarray  # (N, *input_spec.shape) float32, in the input spec's scale
    labels: np.ndarray  # (N,) int64 class indices

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split


@runtime_checkable
class Task(Protocol):
    """What a task module's `TASK` provides. The model takes a float32 tensor of shape
    (N, *input_spec.shape) in the input spec's scale and returns (N, len(class_names)) logits."""

    input_spec: InputSpec
    class_names: tuple[str, ...]  # label i is class_names[i]; shown by `infer`, the server and /docs
    file_types: tuple[str, ...]  # suffixes `read_file` reads (".png", ".csv"); .npy works for every task
    Options: type  # a dataclass of the model's options with their defaults (the `model:` config section)

    def load_splits(self, seed: int, val_fraction: float, test_fraction: float) -> Splits:
        """The data, split into fixed train/validation/test parts that depend only on the arguments."""
        ...

    def fit_preprocessing(self, train: Split) -> dict[str, Any]:
        """Statistics fitted on the training split alone (a scaler's mean and std, a vocabulary);
        saved in every checkpoint. Return {} when the task has none."""
        ...

    def build_model(self, options: Any, preprocessing: dict[str, Any]) -> nn.Module:
        """A fresh model; `preprocessing` is what `fit_preprocessing` returned for this run."""
        ...

    def read_file(self, data: bytes, name: str) -> np.ndarray:
        """One file's bytes (of a type in `file_types`, or standard input that is not .npy) -> one
        sample or a batch for `input_spec.validate`; raise UserError with a one-line reason."""
        ...


def stratified_splits(
    inputs: np.ndarray, labels: np.ndarray, seed: int, val_fraction: float, test_fraction: float
) -> Splits:
    """Train/validation/test parts with the class balance of the whole; fixed by `seed`."""
    from sklearn.model_selection import train_test_split

    rest_x, test_x, rest_y, test_y = train_test_split(
        inputs, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x, rest_y, test_size=val_fraction / (1 - test_fraction), random_state=seed, stratify=rest_y
    )
    return Splits(Split(train_x, train_y), Split(val_x, val_y), Split(test_x, test_y))


def read_csv(data: bytes, name: str, spec: InputSpec) -> np.ndarray:
    """CSV rows of numbers, one sample per row. A header row, when present, must name the spec's
    columns (in any order: the columns are put in the spec's order)."""
    try:
        rows = [
            row for row in csv.reader(io.StringIO(data.decode("utf-8-sig"))) if any(c.strip() for c in row)
        ]
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{name}: not a readable CSV file ({err.__class__.__name__})") from None
    if rows and spec.names and not _is_number(rows[0][0]):
        header, rows = [cell.strip() for cell in rows[0]], rows[1:]
        unknown = sorted(set(header) - set(spec.names))
        missing = [n for n in spec.names if n not in header]
        if unknown or missing:
            raise UserError(
                f"{name}: header does not match the task's columns (missing {missing}, unknown {unknown})"
            )
        order = [header.index(n) for n in spec.names]
        rows = [[row[i] if i < len(row) else "" for i in order] for row in rows]
    if not rows:
        raise UserError(f"{name}: no data rows")
    values = []
    for number, row in enumerate(rows, start=1):
        if len(row) != spec.size:
            raise UserError(f"{name}: row {number} has {len(row)} values, expected {spec.size}")
        bad = next((cell for cell in row if not _is_number(cell)), None)
        if bad is not None:
            raise UserError(f"{name}: row {number}: {bad.strip()!r} is not a number")
        values.append([float(cell) for cell in row])
    return np.array(values, dtype=np.float64)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
