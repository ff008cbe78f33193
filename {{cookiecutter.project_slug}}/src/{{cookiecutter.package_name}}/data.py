"""The example data: scikit-learn's bundled 8x8 digits, split once and fed to the model one way.

Samples travel as float arrays of shape (N, 8, 8) in the data set's own scale, 0 (background) to
16 (ink). `to_tensor` is the only place that turns them into model input, so training, evaluation,
inference and serving cannot disagree about normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .reproducibility import seed_worker

IMAGE_SIZE = 8
PIXEL_MAX = 16.0
NUM_CLASSES = 10


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 8, 8) float32 in [0, PIXEL_MAX]
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split


def load_splits(seed: int, val_fraction: float, test_fraction: float) -> Splits:
    """A stratified train/val/test split that depends only on the seed and the fractions."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)
    labels = digits.target.astype(np.int64)
    rest_x, test_x, rest_y, test_y = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x, rest_y, test_size=val_fraction / (1 - test_fraction), random_state=seed, stratify=rest_y
    )
    return Splits(Split(train_x, train_y), Split(val_x, val_y), Split(test_x, test_y))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, 8, 8) samples in [0, 16] -> (N, 1, 8, 8) float32 tensor in [0, 1]."""
    array = np.asarray(images, dtype=np.float32).reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
    return torch.from_numpy(array / PIXEL_MAX)


def make_loader(
    split: Split, batch_size: int, *, shuffle: bool, seed: int, num_workers: int = 0
) -> DataLoader:
    dataset = TensorDataset(to_tensor(split.images), torch.from_numpy(split.labels))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        worker_init_fn=seed_worker,
    )
