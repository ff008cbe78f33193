from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from {{ cookiecutter.package_name }}.config import load_config
from {{ cookiecutter.package_name }}.data import load_splits
from {{ cookiecutter.package_name }}.train import train

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A short real training run (2 epochs) in a scratch directory; shared by the tests."""
    out = tmp_path_factory.mktemp("trained")
    config = load_config(
        PROJECT_ROOT / "configs" / "train.yaml",
        [
            "optim.epochs=2",
            "device=cpu",
            f"output.runs_dir={out / 'runs'}",
            f"output.model_path={out / 'model.pt'}",
        ],
    )
    return train(config, progress=False)


@pytest.fixture(scope="session")
def splits():
    return load_splits(seed=42, val_fraction=0.15, test_fraction=0.2)


def write_digit_png(sample: np.ndarray, path: Path, *, scale: int = 8, dark_on_light: bool = True) -> Path:
    """Render an (8, 8) sample in [0, 16] as a larger grayscale PNG, as a scan or drawing would be."""
    ink = np.kron(sample / 16.0, np.ones((scale, scale)))
    gray = 1.0 - ink if dark_on_light else ink
    padded = np.pad(gray, scale * 2, constant_values=1.0 if dark_on_light else 0.0)
    Image.fromarray((padded * 255).astype(np.uint8), mode="L").save(path)
    return path
