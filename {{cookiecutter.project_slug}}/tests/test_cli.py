"""The CLI as a user runs it: real subprocesses, exit codes and one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from .conftest import PROJECT_ROOT, TASKS, write_native_file

PACKAGE = "{{ cookiecutter.package_name }}"


def run(*args, cwd=PROJECT_ROOT, stdin: bytes | None = None, preexec_fn=None):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-m", PACKAGE, *map(str, args)],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        timeout=300,
        preexec_fn=preexec_fn,  # e.g. resource limits in the child
    )
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    return result


@pytest.mark.parametrize(
    "command",
    [[], ["train"], ["evaluate"], ["infer"], ["config"], ["tasks"]],
    ids=["main", "train", "eval", "infer", "config", "tasks"],
)
def test_help(command):
    result = run(*command, "--help")
    assert result.returncode == 0
    assert "usage:" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fly"], "invalid choice"),
        (["infer"], "required"),
        (["train", "optim.lrr=1"], "unknown config key"),
        (["train", "device=gpu0"], "device 'gpu0'"),
        (["train", "task=nope"], "unknown task 'nope'; available tasks: " + ", ".join(TASKS)),
        (["train", "precision=fp8"], "precision 'fp8' is not one of fp32, bf16, fp16"),
        (["train", "--nproc", "0"], "argument --nproc: 0 is not 1 or more"),
        (["train", "--nproc", "3"], "data.batch_size=64 does not split evenly among 3 processes"),
        (["train", "--nproc", "2", "device=cuda:1"], "device=cuda:1 names one GPU"),
        (["train", "--nproc", "2", "--nnodes", "2"], "needs RDZV_ENDPOINT=host:port"),
    ],
    ids=[
        "unknown-command",
        "infer-without-paths",
        "unknown-override",
        "bad-device",
        "unknown-task",
        "bad-precision",
        "no-processes",
        "uneven-batch",
        "one-gpu-many-processes",
        "nodes-without-rendezvous",
    ],
)
def test_usage_errors_exit_2(args, message):
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]  # argparse prints its usage above
    assert "Traceback" not in result.stderr


def test_missing_model_is_one_line_exit_1(tmp_path):
    result = run("evaluate", "--model", tmp_path / "none.pt")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "make train" in result.stderr


def test_corrupt_model_is_one_line_exit_1(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    result = run("evaluate", "--model", tmp_path / "bad.pt")
    assert result.returncode == 1
    assert "not a readable checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a process per command
def test_config_and_tasks_print_what_is_configurable():
    result = run("config", "task=breast_cancer", "optim.epochs=3")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["task"] == "breast_cancer" and config["optim"]["epochs"] == 3 and config["model"]
    listing = run("tasks").stdout
    assert all(f"{name}:" in listing for name in TASKS)


def test_evaluate_json(trained, task_name):
    result = run("evaluate", "--json", "--model", trained.model_path, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["task"] == task_name
    assert metrics["test_accuracy"] == pytest.approx(trained.metrics["test_accuracy"])


def test_evaluate_refuses_a_model_of_another_task(trained, task_name):
    other = next(name for name in TASKS if name != task_name)
    result = run("evaluate", "--model", trained.model_path, "--task", other)
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert f"'{task_name}' model but the configured task is '{other}'" in result.stderr


def test_infer_reports_bad_inputs_and_still_predicts_good_ones(trained, task, splits, tmp_path):
    good = tmp_path / "batch.npy"
    np.save(good, splits.test.inputs[:3])
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY broken")
    args = ["infer", "--json", "--device", "cpu", "--model", trained.model_path]
    result = run(*args, tmp_path / "missing.npy", good, tmp_path / "broken.npy")
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["input"] for line in lines] == [f"{good}[{i}]" for i in range(3)]
    assert all(line["class"] == task.class_names[line["label"]] for line in lines)
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2 and "no such file" in errors[0] and "not a readable" in errors[1]


@pytest.mark.parametrize("kind", ["native", "npy"])
def test_infer_reads_standard_input(trained, task_name, splits, tmp_path, kind):
    samples = splits.test.inputs[:1] if kind == "native" else splits.test.inputs[:2]
    path = write_native_file(task_name, samples, tmp_path) if kind == "native" else tmp_path / "batch.npy"
    if kind == "npy":
        np.save(path, samples)
    result = run(
        "infer", "--json", "--device", "cpu", "--model", trained.model_path, "-", stdin=path.read_bytes()
    )
    assert result.returncode == 0, result.stderr
    names = [json.loads(line)["input"] for line in result.stdout.splitlines()]
    assert names == (["<stdin>"] if path.suffix == ".png" else [f"<stdin>[{i}]" for i in range(len(samples))])
