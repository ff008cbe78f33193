"""Checkpoint files: written atomically, read back without unpickling arbitrary objects."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from .config import Config, ModelConfig
from .errors import UserError
from .model import DigitCNN, build_model

FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary file in the same directory, fsync it, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, model: DigitCNN, config: Config, metrics: dict[str, Any]) -> None:
    payload = {
        "format": FORMAT_VERSION,
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config.to_dict(),
        "metrics": metrics,
    }
    atomic_write_bytes(Path(path), lambda handle: torch.save(payload, handle))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no model at {str(path)!r}; train one first with `make train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise UserError(f"{str(path)!r} is not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise UserError(f"{str(path)!r} is not a checkpoint written by this project")
    return payload


def load_model(path: str | Path) -> tuple[DigitCNN, dict[str, Any]]:
    """The trained model on the CPU in eval mode (callers move it once they have chosen a device),
    and the checkpoint's config and metrics."""
    payload = read_checkpoint(path)
    model = build_model(ModelConfig(**payload["config"]["model"]))
    model.load_state_dict(payload["model_state"])
    return model.eval(), payload


# --- resumable training state ------------------------------------------------------------------


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(
        Path(path), lambda handle: torch.save({"format": FORMAT_VERSION, "kind": "training", **state}, handle)
    )


def read_training_state(path: str | Path) -> dict[str, Any]:
    payload = read_checkpoint(path)
    if payload.get("kind") != "training":
        raise UserError(f"{str(path)!r} is a finished model, not a training checkpoint to resume")
    return payload


def latest_training_state(runs_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The newest readable training checkpoint under runs/; damaged ones are skipped with a warning."""
    candidates = sorted(runs_dir.glob("*/checkpoints/*.pt"), key=lambda p: (p.parent.parent.name, p.name))
    for path in reversed(candidates):
        try:
            return path, read_training_state(path)
        except UserError as err:
            print(f"warning: skipping {err}", file=sys.stderr)
    raise UserError(f"no training checkpoint to resume under {str(runs_dir)!r}")
