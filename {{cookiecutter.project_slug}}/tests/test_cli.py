"""The CLI as a user runs it: real subprocesses, exit codes and one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from .conftest import PROJECT_ROOT, write_digit_png

PACKAGE = "{{ cookiecutter.package_name }}"


def run(*args, cwd=PROJECT_ROOT):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", PACKAGE, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "command", [[], ["train"], ["evaluate"], ["infer"]], ids=["main", "train", "eval", "infer"]
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
    ],
    ids=["unknown-command", "infer-without-paths", "unknown-override", "bad-device"],
)
def test_usage_errors_exit_2(args, message):
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr
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


def test_evaluate_json(trained):
    result = run("evaluate", "--json", "--model", trained.model_path, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["test_accuracy"] == pytest.approx(trained.metrics["test_accuracy"])


def test_infer_reports_bad_inputs_and_still_predicts_good_ones(trained, splits, tmp_path):
    good = tmp_path / "batch.npy"
    np.save(good, splits.test.images[:3])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    result = run(
        "infer",
        "--json",
        "--device",
        "cpu",  # the tests must not depend on the machine having a GPU
        "--model",
        trained.model_path,
        tmp_path / "missing.npy",
        good,
        tmp_path / "broken.png",
    )
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["input"] for line in lines] == [f"{good}[{i}]" for i in range(3)]
    assert all({"input", "label", "confidence"} <= line.keys() for line in lines)
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2 and "no such file" in errors[0] and "not a readable" in errors[1]


@pytest.mark.parametrize("kind", ["png", "npy"])
def test_infer_reads_standard_input(trained, splits, tmp_path, kind):
    if kind == "png":
        path = write_digit_png(splits.test.images[0], tmp_path / "digit.png")
    else:
        path = tmp_path / "batch.npy"
        np.save(path, splits.test.images[:2])
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    model = ["--model", str(trained.model_path)]
    command = [sys.executable, "-m", PACKAGE, "infer", "--json", "--device", "cpu", *model, "-"]
    result = subprocess.run(command, input=path.read_bytes(), env=env, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    names = [json.loads(line)["input"] for line in result.stdout.decode().splitlines()]
    assert names == (["<stdin>"] if kind == "png" else ["<stdin>[0]", "<stdin>[1]"])
