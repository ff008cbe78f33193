"""The tabular example: scikit-learn's bundled Wisconsin breast-cancer measurements (569 tumours,
30 features each, no download), classified by an MLP behind a feature scaler fitted on the
training split. Inputs are .npy arrays or CSV rows (with or without the feature-name header)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import option, require
from .base import InputSpec, Split, Splits, read_csv, stratified_splits


def _feature_names() -> tuple[str, ...]:
    from sklearn.datasets import load_breast_cancer

    return tuple(load_breast_cancer().feature_names)


@dataclass
class Options:
    hidden: int = option(64, "units of each hidden layer")
    layers: int = option(2, "hidden layers")
    dropout: float = option(0.1, "dropout after each hidden layer")

    def validate(self) -> None:
        require(
            [
                (self.hidden > 0 and self.layers > 0, "model sizes must be positive"),
                (0 <= self.dropout < 1, "model.dropout must be in [0, 1)"),
            ]
        )


class Standardize(nn.Module):
    """(x - mean) / std with statistics of the training split; they travel in the checkpoint's
    `preprocessing`, so they are not repeated in the weights."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


class BreastCancer:
    """Malignant or benign tumour from 30 measurements of its cell nuclei."""

    input_spec = InputSpec(
        shape=(30,),
        low=0.0,
        description="cell-nucleus measurements (sizes, textures, shapes)",
        names=_feature_names(),
    )
    class_names = ("malignant", "benign")
    file_types = (".csv",)
    Options = Options

    def load_splits(self, seed: int, val_fraction: float, test_fraction: float) -> Splits:
        from sklearn.datasets import load_breast_cancer

        data = load_breast_cancer()
        inputs, labels = data.data.astype(np.float32), data.target.astype(np.int64)
        return stratified_splits(inputs, labels, seed, val_fraction, test_fraction)

    def fit_preprocessing(self, train: Split) -> dict[str, Any]:
        inputs = torch.from_numpy(train.inputs).double()
        std = inputs.std(dim=0)
        return {"mean": inputs.mean(dim=0).float(), "std": torch.where(std > 0, std, 1.0).float()}

    def build_model(self, options: Options, preprocessing: dict[str, Any]) -> nn.Module:
        layers: list[nn.Module] = [Standardize(preprocessing["mean"], preprocessing["std"])]
        width = self.input_spec.size
        for _ in range(options.layers):
            layers += [nn.Linear(width, options.hidden), nn.ReLU(inplace=True), nn.Dropout(options.dropout)]
            width = options.hidden
        return nn.Sequential(*layers, nn.Linear(width, len(self.class_names)))

    def read_file(self, data: bytes, name: str) -> np.ndarray:
        return read_csv(data, name, self.input_spec)


TASK = BreastCancer()
