"""Fixtures shared by the project's tests. Most tests run once per task in src/<package>/tasks/, and
take their valid and invalid inputs from the task's input spec, so a new task is tested as it is."""

import csv
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from {{ cookiecutter.package_name }}.config import load_config
from {{ cookiecutter.package_name }}.tasks import available, get_task
from {{ cookiecutter.package_name }}.tasks.base import InputSpec
from {{ cookiecutter.package_name }}.train import train

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TRAIN_CONFIG = PROJECT_ROOT / "configs" / "train.yaml"
TASKS = available()


def free_port() -> int:
    """A loopback port free right now (the kernel's pick), for a server or rendezvous a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def task_config(task_name: str, out: Path, *overrides: str):
    """The project's training config for one task, writing into `out` and running on the CPU (the
    tests must not depend on the machine having a GPU)."""
    return load_config(
        TRAIN_CONFIG,
        [
            f"task={task_name}",
            "device=cpu",
            f"output.runs_dir={out / 'runs'}",
            f"output.model_path={out / 'model.pt'}",
            *overrides,
        ],
    )


@pytest.fixture(scope="session", params=TASKS)
def task_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def task(task_name):
    return get_task(task_name)


@pytest.fixture(scope="session")
def splits(task):
    config = load_config(TRAIN_CONFIG)
    return task.load_splits(config.seed, config.data.val_fraction, config.data.test_fraction)


@pytest.fixture(scope="session")
def trained(task_name, tmp_path_factory):
    """A short real training run (2 epochs) of the task in a scratch directory."""
    return train(
        task_config(task_name, tmp_path_factory.mktemp(f"trained-{task_name}"), "optim.epochs=2"),
        progress=False,
    )


def valid_sample(spec: InputSpec) -> np.ndarray:
    """A sample inside the spec's range (the middle of a bounded range)."""
    low, high = spec.low, spec.high
    value = (low + high) / 2 if low is not None and high is not None else (low if low is not None else 0.0)
    return np.full(spec.shape, value)


def out_of_range(spec: InputSpec) -> dict[str, np.ndarray]:
    cases = {}
    if spec.high is not None:
        cases["too-large"] = np.full(spec.shape, spec.high + 1.0)
    if spec.low is not None:
        cases["too-small"] = np.full(spec.shape, spec.low - 1.0)
    return cases


def bad_arrays(spec: InputSpec) -> dict[str, tuple[np.ndarray, str]]:
    """Arrays `infer` must refuse, with a fragment of the one-line reason, derived from the spec."""
    wrong = (*spec.shape[:-1], spec.shape[-1] + 1)
    cases = {
        "wrong-shape": (np.zeros(wrong), "shape"),
        "empty": (np.zeros((0, *spec.shape)), "no samples"),
        "nan": (np.full(spec.shape, np.nan), "NaN"),
        "strings": (np.full(spec.shape, "a"), "numbers"),
    }
    cases.update({name: (array, "training scale") for name, array in out_of_range(spec).items()})
    return cases


def write_digit_png(sample: np.ndarray, path: Path, *, scale: int = 8, dark_on_light: bool = True) -> Path:
    """Render an (8, 8) sample in [0, 16] as a larger grayscale PNG, as a scan or drawing would be."""
    ink = np.kron(sample / 16.0, np.ones((scale, scale)))
    gray = 1.0 - ink if dark_on_light else ink
    padded = np.pad(gray, scale * 2, constant_values=1.0 if dark_on_light else 0.0)
    Image.fromarray((padded * 255).astype(np.uint8), mode="L").save(path)
    return path


def write_native_file(task_name: str, samples: np.ndarray, folder: Path) -> Path:
    """The samples in the task's own file type when the tests know how to write it (a PNG per digit,
    CSV rows with a header), else as .npy; one file, its samples in order."""
    spec = get_task(task_name).input_spec
    if ".png" in get_task(task_name).file_types and len(samples) == 1:
        return write_digit_png(samples[0], folder / "sample.png")
    if ".csv" in get_task(task_name).file_types and len(spec.shape) == 1:
        path = folder / "samples.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            if spec.names:
                writer.writerow(spec.names)
            writer.writerows(samples.tolist())
        return path
    path = folder / "samples.npy"
    np.save(path, samples)
    return path
