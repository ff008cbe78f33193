"""The contract between a task (data, model, inputs, labels) and the machinery that trains, checks,
evaluates, serves and ships it.

A task is a module in this package that defines `TASK`, an object with the members of `Task`. The
machinery gives it runs, manifests, checkpoints and resume, evaluation, `infer`, the HTTP server
(its request validation and OpenAPI schema come from `input_spec`), containers and GPU checks.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import warnings
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch import nn

from ..errors import UserError

# The limits on one input (a file, standard input, an upload), all derived from one number and
# checked before anything is allocated for what a header or the content claims: a hostile file
# costs at most what the largest accepted one does (about a GiB, predictions included).
MAX_VALUES = 2**24  # numbers in one input: its samples together, or an image's pixels (4096x4096)
MAX_FILE_BYTES = 16 * MAX_VALUES  # the largest .npy of that many numbers (16-byte floats); text and
# images take fewer bytes for a value
CSV_CELL_CHARS = 64  # characters a CSV cell may take (a number, a column name), for the line limit


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

    @property
    def max_samples(self) -> int:
        """Samples one input may hold: MAX_VALUES numbers, whatever the sample's size."""
        return max(1, MAX_VALUES // self.size)

    def check_too_many(self, count: int, source: str, *, so_far: bool = False) -> None:
        """`so_far`: `count` is as far as a reader went before giving up, not the whole."""
        if count > self.max_samples:
            held = f"more than {self.max_samples:,}" if so_far else f"{count:,}"
            raise UserError(f"{source}: {held} samples; one input may hold {self.max_samples:,}; split it")

    def check_array(self, shape: tuple[int, ...], dtype: np.dtype, source: str) -> None:
        """An array's shape and dtype, from the array or from a .npy header before any of its
        values are read: numbers (never pickled objects), an accepted shape, within the limit."""
        if dtype.hasobject:
            raise UserError(f"{source}: holds Python objects (a pickle), never loaded; save numbers")
        if dtype.kind not in "biuf":
            raise UserError(f"{source}: expected numbers, got an array of {dtype}")
        singles = {self.shape, (self.size,)}
        if (shape not in singles and shape[1:] not in singles) or min(shape, default=0) < 0:
            raise UserError(f"{source}: shape {shape} is not {self.accepted_shapes()}")
        self.check_too_many(1 if shape in singles else shape[0], source)

    def validate(self, array: Any, source: str) -> np.ndarray:
        """One sample or a batch, nested or flat, in range -> (N, *shape) float32."""
        array = np.asarray(array)
        self.check_array(array.shape, array.dtype, source)
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
        """One file's bytes (of a type in `file_types`, or standard input that is not .npy; at most
        MAX_FILE_BYTES) -> one sample or a batch for `input_spec.validate`; raise UserError with a
        one-line reason. Check what the content claims (an image header's size, a row count) against
        the limits above before allocating for it, as `read_csv` and `ImageFiles` do."""
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
    columns (in any order: the columns are put in the spec's order). Read row by row into 8 bytes
    a number, so a file within MAX_FILE_BYTES stays within a few times its size in memory."""
    rows = _csv_rows(_utf8(data, name), name, spec)
    first = next(rows, None)
    header = [cell.strip() for cell in first] if first and spec.names and not _is_number(first[0]) else None
    order = _header_order(header, name, spec) if header else None
    if first is not None and header is None:
        rows = itertools.chain([first], rows)
    width = len(header) if header else spec.size
    values, count = array("d"), 0
    for count, row in enumerate(rows, start=1):
        spec.check_too_many(count, name, so_far=True)
        if len(row) != width:
            raise UserError(f"{name}: row {count} has {len(row)} values, expected {width}")
        cells = [row[i] for i in order] if order else row
        bad = next((cell for cell in cells if not _is_number(cell)), None)
        if bad is not None:
            raise UserError(f"{name}: row {count}: {_excerpt(bad.strip())} is not a number")
        values.extend(float(cell) for cell in cells)
    if count == 0:
        raise UserError(f"{name}: no data rows")
    return np.frombuffer(values, dtype=np.float64).reshape(count, spec.size)


def _utf8(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        where = f"byte 0x{data[err.start]:02x} at offset {err.start}"
        raise UserError(f"{name}: not UTF-8 text ({where}); save the CSV as UTF-8") from None


def _csv_rows(text: str, name: str, spec: InputSpec) -> Iterator[list[str]]:
    """The rows that are not blank. A line too long for the spec's columns is refused before the
    csv module splits it (a megabyte of commas would be a million strings)."""
    limit = CSV_CELL_CHARS * max(spec.size, len(spec.names))

    def lines() -> Iterator[str]:
        for number, line in enumerate(io.StringIO(text, newline=""), start=1):
            if len(line) > limit:
                raise UserError(
                    f"{name}: line {number} is {len(line)} characters long, over the limit of {limit} "
                    f"for {spec.size} values"
                )
            yield line

    try:
        for row in csv.reader(lines()):
            if any(cell.strip() for cell in row):
                yield row
    except csv.Error as err:
        raise UserError(f"{name}: not a readable CSV file ({err})") from None


def _header_order(header: list[str], name: str, spec: InputSpec) -> list[int]:
    """The positions of the spec's columns in a header row."""
    if not set(header) & set(spec.names):
        raise UserError(
            f"{name}: row 1: {_excerpt(header[0])} is not a number, and row 1 names none of the task's "
            f"columns ({_some(spec.names)}) to be a header"
        )
    unknown = sorted(set(header) - set(spec.names))
    missing = [n for n in spec.names if n not in header]
    if unknown or missing:
        raise UserError(
            f"{name}: header does not match the task's columns "
            f"(missing {_some(missing)}, unknown {_some(unknown)})"
        )
    return [header.index(n) for n in spec.names]


def _excerpt(text: str, limit: int = 32) -> str:
    """`text` quoted, control characters escaped, cut short: a bad cell in a one-line message."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def _some(names: list[str] | tuple[str, ...], shown: int = 3) -> str:
    listed = ", ".join(_excerpt(n) for n in names[:shown])
    return f"[{listed}{f', and {len(names) - shown} more' if len(names) > shown else ''}]"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# The first bytes of image files, to identify a file by its content (as Pillow's decoders do), and
# the suffixes of the formats a task may read.
IMAGE_MAGIC = {
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "JPEG": (b"\xff\xd8\xff",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",),
    "TIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    "EPS": (b"%!PS", b"\xc5\xd0\xd3\xc6"),
    "PDF": (b"%PDF",),
    "ICO": (b"\x00\x00\x01\x00",),
    "PSD": (b"8BPS",),
    "JPEG 2000": (b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51"),
}
IMAGE_SUFFIXES = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg"), "GIF": (".gif",), "BMP": (".bmp",)}
IMAGE_SUFFIXES |= {"TIFF": (".tif", ".tiff"), "WEBP": (".webp",)}


def image_format(data: bytes) -> str | None:
    """The image format `data` starts like, or None."""
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for name, magic in IMAGE_MAGIC.items() if data.startswith(magic)), None)


@dataclass(frozen=True)
class ImageFiles:
    """The image files a task reads. Each is known by its content, never by its name, and only the
    declared formats' decoders ever see it: Pillow's others (Ghostscript for EPS among them) are a
    risk for nothing. Its size is checked from its header, before its pixels are decoded."""

    formats: tuple[str, ...]  # Pillow's names, each with IMAGE_SUFFIXES: "PNG", "JPEG"
    max_pixels: int = MAX_VALUES

    @property
    def suffixes(self) -> tuple[str, ...]:
        return tuple(suffix for name in self.formats for suffix in IMAGE_SUFFIXES[name])

    def open(self, data: bytes, name: str):
        """The decoded PIL image (close it, or use `with`), or a one-line UserError."""
        from PIL import Image

        found, wanted = image_format(data), "/".join(self.formats)
        if found is None:
            raise UserError(f"{name}: not a readable {wanted} image (its content is no image format's)")
        if found not in self.formats:
            article = "an" if found[0] in "AEIOU" else "a"
            raise UserError(f"{name}: {article} {found} image, not {wanted}; convert it to {self.formats[0]}")
        limit = f"pixels, over the limit of {self.max_pixels:,} pixels; scale it down"
        try:
            with warnings.catch_warnings():  # Pillow's own limit is higher: ours, below, decides
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data), formats=list(self.formats))
        except Image.DecompressionBombError:
            pixels = f"more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,}"
            raise UserError(f"{name}: an image of {pixels} {limit}") from None
        except Exception as err:  # a damaged header: Pillow raises OSError, SyntaxError, struct.error...
            raise UserError(f"{name}: not a readable {found} image ({_reason(err)})") from None
        width, height = image.size
        try:
            if width * height > self.max_pixels:
                raise UserError(f"{name}: an image of {width}x{height} {limit}")
            image.load()
        except UserError:
            image.close()
            raise
        except Exception as err:  # damaged pixel data
            image.close()
            raise UserError(f"{name}: not a readable {found} image ({_reason(err)})") from None
        return image


def _reason(err: Exception) -> str:
    return f"{err.__class__.__name__}: {str(err)[:80]}" if str(err) else err.__class__.__name__
