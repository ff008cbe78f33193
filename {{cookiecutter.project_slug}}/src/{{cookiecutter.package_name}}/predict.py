"""Inputs to predictions: reading images and arrays into the training format, batched prediction.

Shared by `infer` (and later the HTTP server) so every entry point preprocesses the same way.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_model
from .data import IMAGE_SIZE, PIXEL_MAX, to_tensor
from .device import resolve_device
from .errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
SINGLE_SHAPES = ((IMAGE_SIZE, IMAGE_SIZE), (IMAGE_SIZE * IMAGE_SIZE,))
NPY_MAGIC = b"\x93NUMPY"
STDIN = "<stdin>"
INK_THRESHOLD = 0.2  # fraction of the strongest ink that counts as part of the digit


def validate_samples(array: np.ndarray, source: str) -> np.ndarray:
    """Accept (8, 8), (N, 8, 8), (64,) or (N, 64) in the training scale; return (N, 8, 8) float32."""
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise UserError(f"{source}: expected numbers, got an array of {array.dtype}")
    shape = array.shape
    if shape in SINGLE_SHAPES or shape[1:] in SINGLE_SHAPES:
        array = array.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    else:
        raise UserError(f"{source}: shape {shape} is not (8, 8), (N, 8, 8), (64,) or (N, 64)")
    if len(array) == 0:
        raise UserError(f"{source}: the array holds no samples")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise UserError(f"{source}: contains NaN or infinite values")
    if array.min() < 0 or array.max() > PIXEL_MAX:
        raise UserError(f"{source}: values must lie in [0, {PIXEL_MAX:g}] (the training scale)")
    return array


def image_to_sample(image) -> np.ndarray:
    """Any-size photo or scan of one digit (dark on light or light on dark) -> (8, 8) in [0, 16]."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if "A" in image.getbands():  # transparent background: flatten onto white
        flat = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(flat, image.convert("RGBA"))
    gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    ink = np.clip(background - gray if background >= 0.5 else gray - background, 0.0, None)
    if ink.max() < 0.1:
        raise ValueError("no digit found (blank or very low-contrast image)")
    ink /= ink.max()
    rows, cols = np.nonzero(ink > INK_THRESHOLD)
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    # Centre the digit on a square canvas so resizing keeps its aspect ratio, as in the data set.
    side = max(crop.shape)
    canvas = np.zeros((side, side), dtype=np.float32)
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    canvas[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    small = Image.fromarray(canvas, mode="F").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    sample = np.asarray(small, dtype=np.float32)
    return np.clip(sample / max(sample.max(), 1e-6), 0.0, 1.0) * PIXEL_MAX


def load_image(source, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            image.load()
            return image_to_sample(image)
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{name}: not a readable PNG/JPEG image ({err.__class__.__name__})") from None
    except ValueError as err:
        raise UserError(f"{name}: {err}") from None


def load_array(source, name: str) -> list[tuple[str, np.ndarray]]:
    """A .npy file: one sample keeps the file's name, a batch gives `name[i]`."""
    try:
        array = np.load(source, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"{name}: not a readable .npy array ({err})") from None
    samples = validate_samples(array, name)
    if np.shape(array) in SINGLE_SHAPES:
        return [(name, samples[0])]
    return [(f"{name}[{i}]", sample) for i, sample in enumerate(samples)]


def load_inputs(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """One file, or `-` for standard input (an image or a .npy, told apart by their first bytes)."""
    if str(path) == "-":
        data = sys.stdin.buffer.read()
        if data.startswith(NPY_MAGIC):
            return load_array(io.BytesIO(data), STDIN)
        return [(STDIN, load_image(io.BytesIO(data), STDIN))]
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return [(str(path), load_image(path, str(path)))]
    if suffix == ".npy":
        return load_array(path, str(path))
    raise UserError(f"{path}: unsupported file type {suffix or '(none)'}; use .png, .jpg, .jpeg, .npy or -")


@dataclass(frozen=True)
class Prediction:
    label: int
    confidence: float
    probabilities: list[float]


class Predictor:
    """A loaded model that predicts batches of (N, 8, 8) samples."""

    def __init__(self, model_path: str | Path, device: str = "auto") -> None:
        self.model, self.checkpoint = load_model(model_path)  # a bad file first, then the device
        self.device = resolve_device(device)
        self.model.to(self.device)

    @torch.inference_mode()
    def predict(self, samples: np.ndarray) -> list[Prediction]:
        logits = self.model(to_tensor(samples).to(self.device))
        probabilities = torch.softmax(logits, dim=1).cpu()
        confidence, labels = probabilities.max(dim=1)
        return [
            Prediction(label=int(label), confidence=float(conf), probabilities=probs.tolist())
            for label, conf, probs in zip(labels, confidence, probabilities, strict=True)
        ]
