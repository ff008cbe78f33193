"""Hostile checkpoints: well-formed files (torch.save'd dicts in the project's format) whose contents
are wrong. Every reader (evaluate, infer, serve, resume) answers with one line and exit 1, and
builds nothing from a config its weights do not fit."""

import contextlib
import copy
import functools
import json
import math
import os
import re
import resource
import shutil

import numpy as np
import pytest
import torch

from {{ cookiecutter.package_name }}.checkpoint import load_model
from {{ cookiecutter.package_name }}.errors import UserError

from .conftest import valid_sample
from .test_cli import run


def scaled_model(factor: int):
    """The model's int options times `factor`: the config describes a model the weights do not fit."""

    def change(payload):
        model = payload["config"]["model"]
        model.update({k: v * factor for k, v in model.items() if type(v) is int})

    return change


def nan_weights(payload):
    for value in payload["model_state"].values():
        if value.is_floating_point():
            value.fill_(math.nan)


# name: (what is done to a good checkpoint, a fragment of the one-line answer)
HOSTILE = {
    "wrong-architecture": (scaled_model(2), "does not fit the current"),
    # x1000: a model of tens of gigabytes to terabytes, refused by its weights' shapes, not built
    "huge-config": (scaled_model(1000), "does not fit the current"),
    "no-config": (lambda p: p.pop("config"), "its config is missing"),
    "config-not-a-mapping": (lambda p: p.update(config=[1, 2]), "its config is not a mapping"),
    "extra-config-key": (
        lambda p: p["config"]["model"].update(extra=1),
        "its config is invalid (unknown config key 'model.extra'",
    ),
    "bad-config-value": (
        lambda p: p["config"]["data"].update(val_fraction=2.0),
        "its config is invalid (data.val_fraction must be between 0 and 1)",
    ),
    "other-task-in-config": (
        lambda p: p["config"].update(task="elsewhere"),
        "its config's task 'elsewhere' is not its task",
    ),
    "state-is-a-list": (
        lambda p: p.update(model_state=list(p["model_state"].values())),
        "its model_state is not a mapping",
    ),
    "state-of-numbers": (
        lambda p: p.update(model_state=dict.fromkeys(p["model_state"], 1)),
        "its model_state does not map parameter names to tensors",
    ),
    "state-missing-a-weight": (
        lambda p: p["model_state"].pop(next(iter(p["model_state"]))),
        "1 weights missing",
    ),
    "no-preprocessing": (lambda p: p.pop("preprocessing"), "its preprocessing is missing"),
    "no-model-state": (lambda p: p.pop("model_state"), "its model_state is missing"),
    "task-not-a-name": (lambda p: p.update(task=5), "its task is 5, not a task name"),
    "nan-weights": (nan_weights, "its model gives NaN or infinite scores"),
}


MEMORY_CAP = 16 * 2**30  # bytes of address space: far more than a reader needs, far less than
# "huge-config" asks for, so a regression that builds it for real fails with an allocation error
# instead of exhausting the machine


@contextlib.contextmanager
def memory_capped():
    """This process may take MEMORY_CAP more address space than it has now (Linux; elsewhere no cap)."""
    limits = resource.getrlimit(resource.RLIMIT_AS)
    if os.path.exists("/proc/self/statm"):
        with open("/proc/self/statm") as statm:
            used = int(statm.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + MEMORY_CAP, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, limits)


def run_capped(*args):
    """The CLI in a process that cannot take more than MEMORY_CAP of address space."""
    limit = (MEMORY_CAP, resource.getrlimit(resource.RLIMIT_AS)[1])
    return run(*args, preexec_fn=functools.partial(resource.setrlimit, resource.RLIMIT_AS, limit))


def hostile(model_path, folder, name):
    """A copy of the checkpoint at `model_path`, changed as HOSTILE[name] says."""
    payload = copy.deepcopy(torch.load(model_path, weights_only=True))
    HOSTILE[name][0](payload)
    path = folder / f"{name}.pt"
    torch.save(payload, path)
    return path


def unfit_preprocessing(model_path, folder):
    """A checkpoint whose weights fit but whose preprocessing does not fit the inputs (a scaler's
    statistics of the wrong length): it fails only when run. None for a task without tensors there."""
    payload = torch.load(model_path, weights_only=True)
    tensors = {k: v for k, v in payload["preprocessing"].items() if isinstance(v, torch.Tensor) and v.ndim}
    if not tensors:
        return None
    payload["preprocessing"].update({k: v[:-1] for k, v in tensors.items()})
    torch.save(payload, folder / "unfit-preprocessing.pt")
    return folder / "unfit-preprocessing.pt"


def assert_one_line(result, fragment):
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert fragment in result.stderr
    assert "retrain it with `make train`" in result.stderr


@pytest.mark.parametrize("name", HOSTILE)
def test_every_hostile_checkpoint_is_a_user_error(trained, tmp_path, name):
    """The shared check, in-process: every reader goes through load_model or check."""
    path = hostile(trained.model_path, tmp_path, name)
    with memory_capped(), pytest.raises(UserError, match=re.escape(HOSTILE[name][1])) as caught:
        load_model(path)
    assert caught.value.exit_code == 1 and "\n" not in str(caught.value)


REPORTED = ["wrong-architecture", "huge-config", "no-config", "extra-config-key", "state-is-a-list"]
REPORTED += ["state-of-numbers", "no-preprocessing"]  # the reproductions, each a traceback once


@pytest.mark.slow  # a process per case
@pytest.mark.parametrize("name", REPORTED)
def test_evaluate_refuses_a_hostile_checkpoint_in_one_line(trained, tmp_path, name):
    path = hostile(trained.model_path, tmp_path, name)
    result = run_capped("evaluate", "--device", "cpu", "--model", path)
    assert_one_line(result, HOSTILE[name][1])
    assert result.stdout == ""


@pytest.mark.slow  # a process per case
@pytest.mark.parametrize("name", ["huge-config", "state-is-a-list"])
def test_infer_refuses_a_hostile_checkpoint_in_one_line(trained, task, tmp_path, name):
    sample = tmp_path / "sample.npy"
    np.save(sample, valid_sample(task.input_spec))
    path = hostile(trained.model_path, tmp_path, name)
    result = run_capped("infer", "--device", "cpu", "--model", path, sample)
    assert_one_line(result, HOSTILE[name][1])
    assert result.stdout == ""


@pytest.mark.slow  # a process per case
def test_a_checkpoint_that_fails_when_run_is_refused_before_use(trained, tmp_path):
    path = unfit_preprocessing(trained.model_path, tmp_path)
    if path is None:
        pytest.skip("the task keeps no tensors in its preprocessing")
    assert_one_line(run("evaluate", "--device", "cpu", "--model", path), "its model fails on a sample")


def outputs(tmp_path):
    return [f"output.runs_dir={tmp_path / 'runs'}", f"output.model_path={tmp_path / 'model.pt'}"]


@pytest.mark.slow  # a process per case
def test_resume_outside_a_run_says_what_a_resumable_checkpoint_is(trained, task_name, tmp_path):
    loose = tmp_path / "loose.pt"
    shutil.copy(sorted((trained.run_dir / "checkpoints").glob("*.pt"))[-1], loose)
    result = run("train", "--resume", loose, f"task={task_name}", "device=cpu", *outputs(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "is not in a run: a resumable checkpoint is runs/<id>/checkpoints/*.pt" in result.stderr
    assert "manifest.json" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loose.pt"], "nothing was written"


@pytest.mark.slow  # a process per case
def test_resume_refuses_a_hostile_training_checkpoint(trained, task_name, tmp_path):
    """The same check as every reader's, on a stopped run's checkpoint (huge config)."""
    run_dir = shutil.copytree(trained.run_dir, tmp_path / "runs" / trained.run_dir.name)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (run_dir / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    checkpoint = sorted((run_dir / "checkpoints").glob("*.pt"))[-1]
    checkpoint.write_bytes(hostile(checkpoint, tmp_path, "huge-config").read_bytes())
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    args = ["--resume", checkpoint, f"task={task_name}", "device=cpu", *outputs(tmp_path)]
    result = run_capped("train", *args)
    assert_one_line(result, "does not fit the current")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
