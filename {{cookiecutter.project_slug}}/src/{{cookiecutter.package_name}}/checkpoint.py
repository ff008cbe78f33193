"""Checkpoint files: written atomically, read back without unpickling arbitrary objects, and turned
back into the model of the task they record. What goes into them is decided in training/state.py."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .config import Config, config_from_dict
from .errors import UsageError, UserError
from .files import atomic_write_bytes
from .tasks import Task, available, get_task, model_options

FORMAT_VERSION = 2  # 2: checkpoints record their task and its fitted preprocessing


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
    payload: dict[str, Any]  # config (checked and complete), metrics, preprocessing


def unusable(path: str | Path, problem: str) -> UserError:
    return UserError(f"{str(path)!r} is not a usable checkpoint: {problem}; retrain it with `make train`")


def checkpoint_task(path: str | Path, payload: dict[str, Any], expected: str | None = None) -> Task:
    """The task a checkpoint was trained for, refusing one that is not `expected` (when given)."""
    name = payload.get("task") if payload.get("format") == FORMAT_VERSION else None
    if name is None:
        wanted = f" (the configured task is {expected!r})" if expected else ""
        raise UserError(
            f"{str(path)!r} records no task: it predates task plug-ins{wanted}; retrain it with `make train`"
        )
    if not isinstance(name, str):
        raise unusable(path, f"its task is {name!r}, not a task name")
    if expected and name != expected:
        raise UserError(f"{str(path)!r} is a {name!r} model but the configured task is {expected!r}")
    if name not in available():
        raise UserError(
            f"{str(path)!r} is a {name!r} model, a task this project no longer has "
            f"(tasks: {', '.join(available())}); retrain or restore tasks/{name}.py"
        )
    return get_task(name)


class Parts(NamedTuple):
    """A checkpoint's model, checked: its task, its options, its preprocessing and its weights."""

    task: Task
    config: Config  # the recorded config, complete: what a newer version added has its default
    options: Any  # the task's Options
    preprocessing: dict[str, Any]
    state: dict[str, torch.Tensor]

    def build(self) -> nn.Module:
        return self.task.build_model(self.options, self.preprocessing)


def check(path: str | Path, payload: dict[str, Any], expected_task: str | None = None) -> Parts:
    """Everything a reader (evaluate, infer, serve, resume) takes from a checkpoint, checked before
    anything is built from it: its config, preprocessing and weights, and that the weights fit the
    model its config describes. That model is built on the meta device first (shapes, no memory),
    so a config that asks for gigabytes is refused by the weights' shapes, not by the allocator."""
    task = checkpoint_task(path, payload, expected_task)
    try:
        config = config_from_dict(dict_entry(path, payload, "config"))
        options = model_options(task, config.model)
    except UsageError as err:
        raise unusable(path, f"its config is invalid ({err})") from None
    if config.task != payload["task"]:
        raise unusable(path, f"its config's task {config.task!r} is not its task {payload['task']!r}")
    state = dict_entry(path, payload, "model_state")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise unusable(path, "its model_state does not map parameter names to tensors")
    config.model = dataclasses.asdict(options)
    parts = Parts(task, config, options, dict_entry(path, payload, "preprocessing"), state)
    with torch.device("meta"):
        expected = built(path, parts).state_dict()
    mismatch = state_mismatch(state, expected)
    if mismatch:
        raise UserError(
            f"{str(path)!r} does not fit the current {payload['task']!r} model ({mismatch}); "
            "retrain it with `make train`"
        )
    return parts


def dict_entry(path: str | Path, payload: dict[str, Any], key: str) -> dict[str, Any]:
    value = payload.get(key)
    if not isinstance(value, dict):
        raise unusable(path, f"its {key} is {'missing' if value is None else 'not a mapping'}")
    return value


def built(path: str | Path, parts: Parts) -> nn.Module:
    """The task's model from the checkpoint's options and preprocessing; the task's own failure
    (a preprocessing entry missing or of the wrong kind) is the checkpoint's fault."""
    try:
        return parts.build()
    except Exception as err:  # whatever the task's code raises on entries it does not expect
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        raise unusable(path, f"its model cannot be built from its config ({reason})") from None


def state_mismatch(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str | None:
    """The first difference between a checkpoint's weights and the model's, or None."""
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        example = (missing or unexpected)[0]
        return f"{len(missing)} weights missing, {len(unexpected)} unexpected, e.g. {example!r}"
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            have, want = list(state[name].shape), list(tensor.shape)
            return f"{name} has shape {have} in the checkpoint, {want} in the model"
    return None


def probe(path: str | Path, task: Task, model: nn.Module) -> None:
    """Run the model once on an in-range sample: a checkpoint whose preprocessing does not fit its
    inputs fails here, in one line, rather than in the server's warm-up or the first request."""
    spec, classes = task.input_spec, len(task.class_names)
    bounds = [bound for bound in (spec.low, spec.high) if bound is not None]
    sample = torch.full((1, *spec.shape), sum(bounds) / len(bounds) if bounds else 0.0)
    try:
        with torch.inference_mode():
            output = model(sample)
    except Exception as err:  # a model that cannot run: whatever torch raises
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise unusable(path, f"its model fails on a sample ({type(err).__name__}: {first})") from None
    if not isinstance(output, torch.Tensor) or output.shape != (1, classes):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise unusable(path, f"its model gives {shape} for one sample, not (1, {classes}) class scores")
    if not torch.isfinite(output).all():
        raise unusable(path, "its model gives NaN or infinite scores (its weights diverged)")


def load_model(path: str | Path, expected_task: str | None = None) -> LoadedModel:
    """The trained model on the CPU in eval mode, with its task (callers move it to their device)."""
    payload = read(path)
    parts = check(path, payload, expected_task)
    model = built(path, parts)
    try:
        model.load_state_dict(parts.state)
    except Exception as err:  # dtypes the model's tensors cannot take
        raise unusable(path, f"its weights do not load ({type(err).__name__})") from None
    probe(path, parts.task, model.eval())
    return LoadedModel(payload["task"], parts.task, model, {**payload, "config": parts.config.to_dict()})
