"""The task registry: a task is a module of this package that defines `TASK` (see `base.Task`).

Add one by writing `tasks/<name>.py` and selecting it with `task: <name>` in configs/train.yaml
(or `make train ARGS="task=<name>"`); nothing else needs to know about it.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

from ..config import merge
from ..errors import UsageError, UserError
from .base import Task

MEMBERS = ("input_spec", "class_names", "file_types", "Options", "load_splits", "fit_preprocessing")
MEMBERS += ("build_model", "read_file")


def available() -> list[str]:
    """The task names, found without importing them (so a typo is answered at once)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base" and m.name[0] != "_")


def get_task(name: str) -> Task:
    names = available()
    listing = f"available tasks: {', '.join(names)} (modules in src/{__package__.replace('.', '/')}/)"
    if name not in names:
        raise UsageError(f"unknown task {name!r}; {listing}")
    task = getattr(importlib.import_module(f"{__name__}.{name}"), "TASK", None)
    if task is None:
        raise UserError(f"task module {name!r} defines no TASK; {listing}")
    missing = [member for member in MEMBERS if not hasattr(task, member)]
    if missing:
        raise UserError(f"task {name!r} lacks {', '.join(missing)} (see tasks/base.py); {listing}")
    return task


def model_options(task: Task, values: dict[str, Any]) -> Any:
    """The task's model options: its defaults, then `values`, checked key by key."""
    options = task.Options()
    merge(options, values, prefix="model.")
    if hasattr(options, "validate"):
        options.validate()
    return options


def build_model(task: Task, values: dict[str, Any], preprocessing: dict[str, Any]):
    return task.build_model(model_options(task, values), preprocessing)


def describe_task(name: str) -> str:
    """One paragraph for `python -m pkg tasks`."""
    task = get_task(name)
    spec = task.input_spec
    options = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(task.Options()).items())
    summary = (task.__doc__ or "").strip().split("\n")[0]
    return "\n".join(
        [
            f"{name}: {summary}",
            f"  input    {spec.shape_text()} numbers, {spec.range_text()}: {spec.description}",
            f"  classes  {', '.join(task.class_names)}",
            f"  files    .npy {' '.join(task.file_types)}",
            f"  model    {options}",
        ]
    )
