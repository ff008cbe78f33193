"""Turn the `device` setting into a torch device, failing early with a clear line."""

from __future__ import annotations

import torch

from .config import check_device_spec
from .errors import UserError


def resolve_device(spec: str) -> torch.device:
    check_device_spec(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"device {spec!r} requested but CUDA is not usable here "
                f"(torch {torch.__version__}); use device=cpu or device=auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise UserError(f"device {spec!r} requested but only {count} GPU(s) are visible")
    return device
