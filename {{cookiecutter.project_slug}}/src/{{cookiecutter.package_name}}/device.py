"""Turn the `device` setting into a torch device, with the GPU preflight's verdict up front.

A CUDA device that cannot work (no driver, an old driver, a GPU the wheels have no kernels for, a
CPU-only torch) fails here in one line instead of as a CUDA stack trace minutes later; `auto`
falls back to the CPU with one warning line when a GPU was expected.
"""

from __future__ import annotations

import sys

import torch

from .config import check_device_spec
from .errors import UserError
from .gpu.checks import FAIL, run_checks
from .variants import builds, project_cuda


def installed_build() -> str:
    """The build key of the installed torch ("13.0", "cpu", ...), as far as this project knows it."""
    if torch.version.cuda is None:
        return "cpu"
    key, table = ".".join(torch.version.cuda.split(".")[:2]), builds()
    same_major = [k for k in table if k.split(".")[0] == key.split(".")[0]]
    return key if key in table else (same_major or ["cpu"])[0]


def cuda_problem() -> str | None:
    """Why CUDA will not work for this project here, or None when it will."""
    report = run_checks(project_cuda() or installed_build())
    failed = report.first(FAIL)
    if failed:
        return failed.message
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} cannot initialise CUDA (torch.cuda.is_available() is False)"
    return None


def gpu_expected() -> bool:
    return torch.version.cuda is not None or (project_cuda() or "cpu") != "cpu"


def resolve_device(spec: str, quiet: bool = False) -> torch.device:
    """`quiet` drops the CPU-fallback warning (processes other than the first on a node)."""
    check_device_spec(spec)
    if spec == "cpu":
        return torch.device("cpu")
    problem = cuda_problem()
    if spec == "auto":
        if problem is None:
            return torch.device("cuda")
        if gpu_expected() and not quiet:
            print(f"warning: CUDA is not usable, running on the CPU: {problem}", file=sys.stderr)
        return torch.device("cpu")
    if problem:
        raise UserError(
            f"device {spec!r} requested but CUDA is not usable: {problem} (details: make gpu-check)"
        )
    device = torch.device(spec)
    if device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UserError(f"device {spec!r} requested but only {count} GPU(s) are visible")
    return device
