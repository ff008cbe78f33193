"""The example task: scikit-learn's bundled 8x8 handwritten digits (no download), a small CNN that
reaches about 98 % in seconds on a CPU, and photos or scans of a digit as input files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from ..config import option, require
from ..errors import UserError
from .base import ImageFiles, InputSpec, Split, Splits, stratified_splits

SIZE, INK_MAX = 8, 16.0
INK_THRESHOLD = 0.2  # fraction of the strongest ink that counts as part of the digit
IMAGES = ImageFiles(formats=("PNG", "JPEG"))  # known by their content; no other decoder runs


@dataclass
class Options:
    channels: int = option(32, "filters of the first convolution; the second has twice as many")
    hidden: int = option(128, "units of the hidden dense layer")
    dropout: float = option(0.25, "dropout before the dense layers")

    def validate(self) -> None:
        require(
            [
                (self.channels > 0 and self.hidden > 0, "model sizes must be positive"),
                (0 <= self.dropout < 1, "model.dropout must be in [0, 1)"),
            ]
        )


class DigitCNN(nn.Module):
    def __init__(self, options: Options) -> None:
        super().__init__()
        channels = options.channels
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(options.dropout),
            nn.Linear(2 * channels * (SIZE // 2) ** 2, options.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(options.hidden, 10),
        )

    def forward(self, x):  # (N, 8, 8) ink levels 0-16
        return self.classifier(self.features(x.unsqueeze(1) / INK_MAX))


class Digits:
    """Handwritten digits 0-9 from 8x8 grey levels (PNG/JPEG photos and scans are scaled to them)."""

    input_spec = InputSpec(
        shape=(SIZE, SIZE), low=0.0, high=INK_MAX, description="grey levels, 0 (background) to 16 (ink)"
    )
    class_names = tuple(str(digit) for digit in range(10))
    file_types = IMAGES.suffixes
    Options = Options

    def load_splits(self, seed: int, val_fraction: float, test_fraction: float) -> Splits:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, labels = digits.images.astype(np.float32), digits.target.astype(np.int64)
        return stratified_splits(images, labels, seed, val_fraction, test_fraction)

    def fit_preprocessing(self, train: Split) -> dict[str, Any]:
        return {}  # the scale is fixed (0-16), nothing to learn from the data

    def build_model(self, options: Options, preprocessing: dict[str, Any]) -> nn.Module:
        return DigitCNN(options)

    def read_file(self, data: bytes, name: str) -> np.ndarray:
        with IMAGES.open(data, name) as image:
            try:
                return image_to_sample(image)
            except ValueError as err:
                raise UserError(f"{name}: {err}") from None


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
    small = Image.fromarray(canvas, mode="F").resize((SIZE, SIZE), Image.Resampling.BOX)
    sample = np.asarray(small, dtype=np.float32)
    return np.clip(sample / max(sample.max(), 1e-6), 0.0, 1.0) * INK_MAX


TASK = Digits()
