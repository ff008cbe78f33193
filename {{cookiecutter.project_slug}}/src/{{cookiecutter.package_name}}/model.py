"""The example network: a small CNN that reaches about 98 % on the 8x8 digits in seconds on a CPU."""

from __future__ import annotations

from torch import nn

from .config import ModelConfig
from .data import IMAGE_SIZE, NUM_CLASSES


class DigitCNN(nn.Module):
    def __init__(self, channels: int = 32, hidden: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        flat = 2 * channels * (IMAGE_SIZE // 2) ** 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(flat, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, NUM_CLASSES),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def build_model(config: ModelConfig) -> DigitCNN:
    return DigitCNN(channels=config.channels, hidden=config.hidden, dropout=config.dropout)
