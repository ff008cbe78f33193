"""Checkpoint files: written atomically, read back without unpickling arbitrary objects, and turned
back into the model of the task they record. What goes into them is decided in training/state.py."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .tasks import Task, available, build_model, get_task

FORMAT_VERSION = 2  # 2: checkpoints record their task and its fitted preprocessing
UMASK = os.umask(0o022)
os.umask(UMASK)  # reading the umask means setting it; put it straight back


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary file in the same directory, fsync it, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # open()'s mode: mkstemp's 0600 hides models from containers
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_bytes(Path(path), lambda handle: torch.save({"format": FORMAT_VERSION, **payload}, handle))


def read(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no model at {str(path)!r}; train one first with `make train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise UserError(f"{str(path)!r} is not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") not in (1, FORMAT_VERSION):
        raise UserError(f"{str(path)!r} is not a checkpoint written by this project")
    return payload


@dataclass(frozen=True)
class LoadedModel:
    task_name: str
    task: Task
    model: nn.Module  # on the CPU, in eval mode
    payload: dict[str, Any]  # config, metrics, preprocessing


def checkpoint_task(path: str | Path, payload: dict[str, Any], expected: str | None = None) -> Task:
    """The task a checkpoint was trained for, refusing one that is not `expected` (when given)."""
    name = payload.get("task") if payload.get("format") == FORMAT_VERSION else None
    if name is None:
        wanted = f" (the configured task is {expected!r})" if expected else ""
        raise UserError(
            f"{str(path)!r} records no task: it predates task plug-ins{wanted}; retrain it with `make train`"
        )
    if expected and name != expected:
        raise UserError(f"{str(path)!r} is a {name!r} model but the configured task is {expected!r}")
    if name not in available():
        raise UserError(
            f"{str(path)!r} is a {name!r} model, a task this project no longer has "
            f"(tasks: {', '.join(available())}); retrain or restore tasks/{name}.py"
        )
    return get_task(name)


def load_model(path: str | Path, expected_task: str | None = None) -> LoadedModel:
    """The trained model on the CPU in eval mode, with its task (callers move it to their device)."""
    payload = read(path)
    task = checkpoint_task(path, payload, expected_task)
    model = build_model(task, payload["config"]["model"], payload["preprocessing"])
    try:
        model.load_state_dict(payload["model_state"])
    except RuntimeError as err:  # the task's model changed since this checkpoint was written
        first = str(err).split("\n\t")[1] if "\n\t" in str(err) else str(err).splitlines()[0]
        raise UserError(
            f"{str(path)!r} does not fit the current {payload['task']!r} model ({first.strip()}); "
            "retrain it with `make train`"
        ) from None
    return LoadedModel(payload["task"], task, model.eval(), payload)
