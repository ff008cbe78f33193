"""A baked CPU project driven exactly as a user would: make env, train, evaluate, infer (slow)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from .conftest import bake_ok, run_make

pytestmark = pytest.mark.slow

RENDER_KNOWN_DIGITS = """
import sys
from pathlib import Path
import numpy as np
from digit_classifier.config import load_config
from digit_classifier.data import load_splits
from tests.conftest import write_digit_png

out, config = Path(sys.argv[1]), load_config("configs/train.yaml")
test = load_splits(config.seed, config.data.val_fraction, config.data.test_fraction).test
samples = np.stack([test.images[np.flatnonzero(test.labels == d)[0]] for d in range(10)])
np.save(out / "batch.npy", samples)
for d, sample in enumerate(samples):
    write_digit_png(sample, out / f"digit{d}.png", scale=4 + 2 * d, dark_on_light=d % 2 == 0)
"""


def pins(lock_file) -> dict[str, str]:
    return dict(re.findall(r"^([a-z0-9._-]+)==(\S+)", lock_file.read_text(), re.M))


def test_locks_are_complete_and_hashed(cpu_project):
    for name in ("prod.txt", "dev.txt"):
        text = (cpu_project / "requirements" / name).read_text()
        requirements = re.findall(r"^\S+==\S+ \\\n((?:\s+--hash=sha256:[0-9a-f]{64}\s*\\?\n)+)", text, re.M)
        assert len(requirements) == len(pins(cpu_project / "requirements" / name)) > 3
        assert "make lock" in text.splitlines()[1]
        assert "download.pytorch.org" not in text and "/opt/" not in text, "no machine-specific sources"
    assert pins(cpu_project / "requirements" / "prod.txt")["torch"] == "2.13.0+cpu"


def test_env_is_a_fast_no_op_when_up_to_date(cpu_project):
    result = run_make(cpu_project, "env")
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout
    assert "sync" not in result.stdout


def test_train_evaluate_infer(cpu_project, tmp_path):
    result = run_make(cpu_project, "train", "ARGS=--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = sorted((cpu_project / "runs").glob("2*"))[-1:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.95
    assert {"config.yaml", "metrics.json", "curves.png", "checkpoint.pt"} <= {
        p.name for p in run_dir.iterdir()
    }
    model = cpu_project / "models" / "model.pt"
    assert model.read_bytes() == (run_dir / "checkpoint.pt").read_bytes()

    result = run_make(cpu_project, "-s", "evaluate", "ARGS=--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["test_accuracy"] == pytest.approx(metrics["test_accuracy"])

    # Known digits: the first test sample of each class, drawn as PNGs of several sizes and both
    # polarities by the project's own test helper, plus the same samples as one .npy batch.
    python = cpu_project / ".venv" / "bin" / "python"
    subprocess.run([str(python), "-c", RENDER_KNOWN_DIGITS, str(tmp_path)], cwd=cpu_project, check=True)
    paths = [tmp_path / f"digit{d}.png" for d in range(10)]
    inputs = " ".join(map(str, [*paths, tmp_path / "batch.npy"]))
    result = run_make(cpu_project, "-s", "infer", f"INPUT={inputs}", "ARGS=--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["label"] for line in lines[:10]] == list(range(10)), "PNG digits"
    assert [line["label"] for line in lines[10:]] == list(range(10)), ".npy batch"
    assert all(0.5 < line["confidence"] <= 1 for line in lines)


def test_the_projects_full_suite_passes_through_make_test(cpu_project):
    """`make test` in the baked project: its whole suite, the real-server tests included."""
    result = run_make(cpu_project, "test", "ARGS=-q -p no:cacheprovider")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", result.stdout) and "deselected" not in result.stdout


def test_check_lock_catches_both_kinds_of_drift(cpu_project):
    assert run_make(cpu_project, "check-lock").returncode == 0
    prod_in = cpu_project / "requirements" / "prod.in"
    original = prod_in.read_text()
    prod_in.write_text(original + "rich\n")
    try:
        result = run_make(cpu_project, "check-lock")
    finally:
        prod_in.write_text(original)
    assert result.returncode != 0
    assert (
        "requirements/prod.in changed after requirements/prod.txt was locked: run `make lock`"
        in result.stderr
    )
    tqdm = pins(cpu_project / "requirements" / "prod.txt")["tqdm"]
    python = cpu_project / ".venv" / "bin" / "python"
    subprocess.run(
        ["uv", "pip", "uninstall", "--python", str(python), "tqdm"], check=True, capture_output=True
    )
    result = run_make(cpu_project, "check-lock")
    assert (
        result.returncode != 0
        and f"tqdm=={tqdm} is locked but not installed: run `make sync`" in result.stderr
    )
    assert run_make(cpu_project, "sync").returncode == 0
    assert run_make(cpu_project, "check-lock").returncode == 0


def test_infer_without_input_is_a_usage_error(cpu_project):
    result = run_make(cpu_project, "infer")
    assert result.returncode != 0
    assert "error: name the inputs, e.g. make infer INPUT=digit.png" in result.stderr


def test_pip_tools_fallback_locks_the_same_pins_as_uv(cpu_project, tmp_path):
    """Without uv on PATH the project locks with pip-compile and syncs with pip-sync: same pins."""
    project = bake_ok(tmp_path, cuda_version="cpu")
    path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if not os.path.exists(os.path.join(p, "uv"))
    )
    env = {**os.environ, "PATH": path}
    result = run_make(project, "env", env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "piptools compile" in result.stdout and "piptools sync" in result.stdout
    for name in ("prod.txt", "dev.txt"):
        assert pins(project / "requirements" / name) == pins(cpu_project / "requirements" / name), name
    check = subprocess.run(
        [str(project / ".venv" / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout
    result = run_make(project, "test", "ARGS=-q -k config", env=env)
    assert result.returncode == 0, result.stdout[-2000:]


def test_cruft_record_points_at_this_template(cpu_project):
    from .conftest import TEMPLATE

    record = json.loads((cpu_project / ".cruft.json").read_text())
    assert record["template"] == str(TEMPLATE)
    head = subprocess.run(["git", "-C", str(TEMPLATE), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("the template is not a git checkout with commits")
    assert record["commit"] == head.stdout.strip()
    check = subprocess.run(
        [sys.executable, "-m", "cruft", "check"], cwd=cpu_project, capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stdout + check.stderr
