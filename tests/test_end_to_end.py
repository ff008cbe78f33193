"""A baked CPU project driven exactly as a user would: make env, train, evaluate, infer, serve, and a
task added as one new file (slow)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from .conftest import INSTALLABLE_TORCH, bake_ok, free_port, run_make
from .test_locks import PROJECT_LOCKS, unlock

pytestmark = pytest.mark.slow

PACKAGE = "digit_classifier"
TABULAR_MODEL = "models/breast_cancer.pt"

RENDER_KNOWN_DIGITS = """
import sys
from pathlib import Path
import numpy as np
from digit_classifier.config import load_config
from digit_classifier.tasks import get_task
from tests.conftest import write_digit_png

out, config = Path(sys.argv[1]), load_config("configs/train.yaml")
test = get_task("digits").load_splits(config.seed, config.data.val_fraction, config.data.test_fraction).test
samples = np.stack([test.inputs[np.flatnonzero(test.labels == d)[0]] for d in range(10)])
np.save(out / "batch.npy", samples)
for d, sample in enumerate(samples):
    write_digit_png(sample, out / f"digit{d}.png", scale=4 + 2 * d, dark_on_light=d % 2 == 0)
"""

# The whole breast-cancer test split as a .npy batch and as a CSV whose header (sklearn's feature
# names) puts the columns in reverse order, with the true labels beside them.
WRITE_TABULAR_SAMPLES = """
import json, sys
from pathlib import Path
import numpy as np
from digit_classifier.config import load_config
from digit_classifier.tasks import get_task

out, config = Path(sys.argv[1]), load_config("configs/train.yaml")
task = get_task("breast_cancer")
test = task.load_splits(config.seed, config.data.val_fraction, config.data.test_fraction).test
np.save(out / "rows.npy", test.inputs)
lines = [",".join(task.input_spec.names[::-1])]
lines += [",".join(f"{value:.9g}" for value in row[::-1]) for row in test.inputs]
(out / "rows.csv").write_text("\\n".join(lines) + "\\n")
(out / "labels.json").write_text(json.dumps(test.labels.tolist()))
"""

NPY_AS_JSON = "import json, sys, numpy as np; print(json.dumps(np.load(sys.argv[1]).tolist()))"
SAVE_NPY = (
    "import json, sys, numpy as np; np.save(sys.argv[1], np.array(json.loads(sys.argv[2]), np.float32))"
)

# A third task, from the public contract alone (tasks/base.py): what a user adds to the project.
IRIS_TASK = '''"""Iris species from four flower measurements (scikit-learn's bundled data set)."""

from dataclasses import dataclass

import numpy as np
from torch import nn

from ..config import option, require
from .base import InputSpec, read_csv, stratified_splits


@dataclass
class Options:
    hidden: int = option(32, "units of the hidden layer")

    def validate(self) -> None:
        require([(self.hidden > 0, "model.hidden must be positive")])


class Iris:
    """Iris species from sepal and petal measurements."""

    input_spec = InputSpec(shape=(4,), low=0.0, high=10.0, description="sepal/petal length/width, cm")
    class_names = ("setosa", "versicolor", "virginica")
    file_types = (".csv",)
    Options = Options

    def load_splits(self, seed, val_fraction, test_fraction):
        from sklearn.datasets import load_iris

        data = load_iris()
        inputs, labels = data.data.astype(np.float32), data.target.astype(np.int64)
        return stratified_splits(inputs, labels, seed, val_fraction, test_fraction)

    def fit_preprocessing(self, train):
        return {}

    def build_model(self, options, preprocessing):
        return nn.Sequential(nn.Linear(4, options.hidden), nn.ReLU(), nn.Linear(options.hidden, 3))

    def read_file(self, data, name):
        return read_csv(data, name, self.input_spec)


TASK = Iris()
'''

# A task module whose TASK lacks one member of the contract.
BROKEN_TASK = """from types import SimpleNamespace

from .iris import TASK as IRIS

TASK = SimpleNamespace(**{k: getattr(IRIS, k) for k in dir(IRIS) if k[0] != "_" and k != "read_file"})
"""

# The first iris of each species in the data set.
IRIS_SAMPLES = [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]]
IRIS_CLASSES = ["setosa", "versicolor", "virginica"]


def run_python(python: Path, project: Path, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [str(python), *args], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )


def cli(python: Path, project: Path, *args: str, env: dict[str, str] | None = None):
    """`python -m <package> ...` in `project`, as the Makefile runs it."""
    return run_python(python, project, "-m", PACKAGE, *args, env=env)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess, exit_code: int) -> str:
    assert result.returncode == exit_code, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def make_json(project: Path, target: str, *variables: str) -> list[dict]:
    """`make -s <target>` whose output is JSON lines (`evaluate`, `infer` with ARGS=--json)."""
    return json_lines(ok(run_make(project, "-s", target, *variables)))


def run_dir_of(project: Path, train: subprocess.CompletedProcess) -> Path:
    """The run directory that `train` reported (its `run   <path>` line)."""
    (path,) = re.findall(r"^run +(\S+)$", ok(train), re.M)
    return project / path


def http(url: str, body: bytes | None = None, content_type: str = "application/json") -> tuple[int, dict]:
    """(status, JSON body) of a GET (no body) or POST; 4xx and 5xx are answers, not exceptions."""
    headers = {"Content-Type": content_type} if body is not None else {}
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def post_json(url: str, payload: object) -> tuple[int, dict]:
    """POST `payload` as JSON (bytes are sent as they are, to send what JSON cannot encode)."""
    return http(url, payload if isinstance(payload, bytes) else json.dumps(payload).encode())


def post_file(url: str, name: str, data: bytes) -> tuple[int, dict]:
    """A multipart upload of one file in the field `file`, as a browser or `curl -F` sends it."""
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return http(url, body, f"multipart/form-data; boundary={boundary}")


def rejections(url: str, bodies: dict[str, object]) -> dict[str, tuple[int, str]]:
    """POST each body to /predict: every one must get a 4xx with a one-line detail and a request id."""
    answers = {}
    for why, body in bodies.items():
        status, answer = post_json(url + "/predict", body)
        assert 400 <= status < 500 and answer.get("request_id"), (why, status, answer)
        assert isinstance(answer["detail"], str) and "\n" not in answer["detail"], (why, answer)
        answers[why] = (status, answer["detail"])
    return answers


@contextmanager
def serving(python: Path, project: Path, *overrides: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`serve` on a free loopback port, yielding its URL once /ready answers; SIGTERM at the end."""
    port = free_port()
    command = [str(python), "-m", PACKAGE, "serve", "--port", str(port), "device=cpu", *overrides]
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(
            command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_until_ready(f"http://127.0.0.1:{port}", server, log)
            yield f"http://127.0.0.1:{port}"
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)


def wait_until_ready(url: str, server: subprocess.Popen, log, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while http_ready(url) is None:
        if server.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            pytest.fail(f"the server did not get ready (exit {server.poll()}):\n{log.read()[-3000:]}")
        time.sleep(0.3)


def http_ready(url: str) -> dict | None:
    try:
        status, body = http(url + "/ready")
    except OSError:  # not listening yet
        return None
    return body if status == 200 else None


def get_json(url: str) -> object | None:
    """The JSON a GET answers with 200, or None (not listening yet, or another status)."""
    try:
        status, body = http(url)
    except (OSError, ValueError):  # not listening yet; not JSON
        return None
    return body if status == 200 else None


def pins(lock_file) -> dict[str, str]:
    return dict(re.findall(r"^([a-z0-9._-]+)==(\S+)", lock_file.read_text(), re.M))


def test_locks_are_complete_and_hashed(cpu_project):
    for name in ("prod.txt", "dev.txt"):
        text = (cpu_project / "requirements" / name).read_text()
        requirements = re.findall(
            r"^\S+==\S+(?: ;[^\\\n]+)? \\\n((?:\s+--hash=sha256:[0-9a-f]{64}\s*\\?\n)+)", text, re.M
        )
        assert len(requirements) == len(pins(cpu_project / "requirements" / name)) > 3
        assert text.splitlines()[4] == "#    make lock"
        assert re.fullmatch(r"# resolved as of \S+Z \(requirements/lock-date\)", text.splitlines()[6])
        assert "download.pytorch.org" not in text and "/opt/" not in text, "no machine-specific sources"
    assert pins(cpu_project / "requirements" / "prod.txt")["torch"] == f"{INSTALLABLE_TORCH}+cpu"


def test_env_is_a_fast_no_op_when_up_to_date(cpu_project):
    result = run_make(cpu_project, "env")
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout
    assert "sync" not in result.stdout


def test_train_evaluate_infer(cpu_project, project_python, tmp_path):
    run_dir = run_dir_of(cpu_project, run_make(cpu_project, "train", "ARGS=--no-progress"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.95 and metrics["task"] == "digits"
    assert {"config.yaml", "metrics.json", "curves.png", "checkpoint.pt"} <= {
        p.name for p in run_dir.iterdir()
    }
    model = cpu_project / "models" / "model.pt"
    assert model.read_bytes() == (run_dir / "checkpoint.pt").read_bytes()

    (evaluation,) = make_json(cpu_project, "evaluate", "ARGS=--json")
    assert evaluation["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert evaluation["task"] == "digits"

    # Known digits: the first test sample of each class, drawn as PNGs of several sizes and both
    # polarities by the project's own test helper, plus the same samples as one .npy batch.
    ok(run_python(project_python, cpu_project, "-c", RENDER_KNOWN_DIGITS, str(tmp_path)))
    paths = [tmp_path / f"digit{d}.png" for d in range(10)]
    inputs = " ".join(map(str, [*paths, tmp_path / "batch.npy"]))
    lines = make_json(cpu_project, "infer", f"INPUT={inputs}", "ARGS=--json")
    assert [line["label"] for line in lines[:10]] == list(range(10)), "PNG digits"
    assert [line["label"] for line in lines[10:]] == list(range(10)), ".npy batch"
    assert all(0.5 < line["confidence"] <= 1 for line in lines)


def test_make_tensorboard_serves_the_runs_of_the_config_on_loopback(cpu_project, project_python, tmp_path):
    """A run trained with a config of its own (runs_dir in tmp_path); TensorBoard, started by make
    with that config, lists it and serves its curves."""
    config = tmp_path / "train.yaml"
    config.write_text(f"task: digits\noutput:\n  runs_dir: {tmp_path}/runs\n  model_path: {tmp_path}/m.pt\n")
    args = ("train", "--config", str(config), "--no-progress", "optim.epochs=2")
    run_dir = run_dir_of(cpu_project, cli(project_python, cpu_project, *args))
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    port = free_port()
    board = subprocess.Popen(
        ["make", "-s", "tensorboard", f"CONFIG={config}", f"PORT={port}", "TORCH_INDEX_URL="],
        cwd=cpu_project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/data"
    try:
        deadline = time.monotonic() + 120
        while get_json(f"{base}/runs") != [run_dir.name]:
            assert board.poll() is None, board.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "TensorBoard did not list the run"
            time.sleep(0.5)
        query = f"run={run_dir.name}&tag=accuracy/val"
        points = get_json(f"{base}/plugin/scalars/scalars?{query}")  # [wall time, step, value]
        assert [(step, round(value, 5)) for _, step, value in points] == [
            (row["epoch"], round(row["val_accuracy"], 5)) for row in history
        ]
    finally:
        if board.poll() is None:
            os.killpg(board.pid, signal.SIGTERM)
        board.wait(timeout=60)


@pytest.fixture(scope="module")
def tabular(cpu_project, project_python, tmp_path_factory) -> SimpleNamespace:
    """The breast-cancer task trained with make beside the digits model (models/model.pt stays the
    digits one), and its whole test split as files, with the true labels."""
    args = f"ARGS=task=breast_cancer output.model_path={TABULAR_MODEL} --no-progress"
    run_dir = run_dir_of(cpu_project, run_make(cpu_project, "train", args))
    samples = tmp_path_factory.mktemp("tabular")
    ok(run_python(project_python, cpu_project, "-c", WRITE_TABULAR_SAMPLES, str(samples)))
    labels = json.loads((samples / "labels.json").read_text())
    return SimpleNamespace(run_dir=run_dir, npy=samples / "rows.npy", csv=samples / "rows.csv", labels=labels)


def infer_tabular(project: Path, *paths: Path) -> list[dict]:
    inputs = " ".join(map(str, paths))
    return make_json(project, "infer", f"INPUT={inputs}", f"ARGS=--json --model {TABULAR_MODEL}")


def test_tabular_task_trains_evaluates_and_infers(cpu_project, tabular):
    metrics = json.loads((tabular.run_dir / "metrics.json").read_text())
    assert metrics["task"] == "breast_cancer" and metrics["test_accuracy"] >= 0.9
    assert "task: breast_cancer" in (tabular.run_dir / "config.yaml").read_text()
    assert (cpu_project / TABULAR_MODEL).read_bytes() == (tabular.run_dir / "checkpoint.pt").read_bytes()

    (evaluation,) = make_json(cpu_project, "evaluate", f"ARGS=--json --model {TABULAR_MODEL}")
    assert evaluation["task"] == "breast_cancer" and evaluation["model"] == TABULAR_MODEL
    assert evaluation["test_accuracy"] == pytest.approx(metrics["test_accuracy"])

    count = len(tabular.labels)
    lines = infer_tabular(cpu_project, tabular.npy, tabular.csv)
    assert len(lines) == 2 * count
    from_npy, from_csv = lines[:count], lines[count:]
    assert [line["input"] for line in from_csv] == [f"{tabular.csv}[{i}]" for i in range(count)]
    assert [line["label"] for line in from_npy] == [line["label"] for line in from_csv]
    assert {line["class"] for line in lines} <= {"malignant", "benign"}
    right = sum(line["label"] == label for line, label in zip(from_npy, tabular.labels, strict=True))
    assert right >= 0.9 * count


def test_tabular_task_served(cpu_project, project_python, tabular):
    expected = [line["label"] for line in infer_tabular(cpu_project, tabular.npy)]
    samples = json.loads(ok(run_python(project_python, cpu_project, "-c", NPY_AS_JSON, str(tabular.npy))))
    first = samples[0]
    with serving(project_python, cpu_project, f"model_path={TABULAR_MODEL}") as url:
        assert http(url + "/ready")[1]["task"] == "breast_cancer"
        status, answer = post_json(url + "/predict", {"inputs": samples})
        assert status == 200 and answer["predictions"] == expected, answer
        assert answer["labels"] == [("malignant", "benign")[label] for label in expected]
        status, answer = post_file(url + "/predict/file", "rows.csv", tabular.csv.read_bytes())
        assert status == 200 and answer["predictions"] == expected, answer
        errors = rejections(
            url,
            {
                "wrong length": {"inputs": [first[:29]]},
                "negative": {"inputs": [[-1.0, *first[1:]]]},
                "string": {"inputs": [["x", *first[1:]]]},
                "empty": {"inputs": []},
                "NaN literal": {"inputs": [[float("nan"), *first[1:]]]},
                "malformed": b'{"inputs": [[1, 2',
            },
        )
    expected = "inputs must be a list of samples, each a list of 30 numbers (inputs[0]: Expected `array`"
    assert errors["wrong length"][0] == 422 and errors["wrong length"][1].startswith(expected), errors
    assert errors["negative"][0] == 422 and "values must be >= 0" in errors["negative"][1]
    assert errors["string"][0] == errors["empty"][0] == 422
    assert errors["NaN literal"][0] == errors["malformed"][0] == 400


@pytest.fixture(scope="module")
def iris_project(tmp_path_factory, project_python) -> SimpleNamespace:
    """A fresh bake plus a third task: one new file and one changed config line. It runs on the
    shared project's environment, with this project's sources first on the path."""
    project = bake_ok(tmp_path_factory.mktemp("iris"), cuda_version="cpu")
    (project / "src" / PACKAGE / "tasks" / "iris.py").write_text(IRIS_TASK)
    config = project / "configs" / "train.yaml"
    text, count = re.subn(r"^task: digits\b", "task: iris", config.read_text(), flags=re.M)
    assert count == 1, text
    config.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    return SimpleNamespace(path=project, python=project_python, env=env)


def test_a_task_is_one_file_and_one_config_line(iris_project):
    project, python, env = iris_project.path, iris_project.python, iris_project.env
    run_dir = run_dir_of(
        project, cli(python, project, "train", "--no-progress", "optim.epochs=30", "optim.lr=0.03", env=env)
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task"] == "iris" and metrics["test_accuracy"] >= 0.9, metrics
    evaluation = json.loads(ok(cli(python, project, "evaluate", "--json", env=env)))
    assert evaluation["task"] == "iris"
    assert evaluation["test_accuracy"] == pytest.approx(metrics["test_accuracy"])

    ok(run_python(python, project, "-c", SAVE_NPY, "few.npy", json.dumps(IRIS_SAMPLES)))
    lines = json_lines(ok(cli(python, project, "infer", "--json", "few.npy", env=env)))
    assert [line["class"] for line in lines] == IRIS_CLASSES
    listing = ok(cli(python, project, "tasks", env=env))
    assert (
        re.search(r"^iris: Iris species", listing, re.M)
        and "classes  setosa, versicolor, virginica" in listing
    )

    with serving(python, project, env=env) as url:
        assert http(url + "/ready")[1]["task"] == "iris"
        status, answer = post_json(url + "/predict", {"inputs": IRIS_SAMPLES})
        assert status == 200 and answer["labels"] == IRIS_CLASSES, answer
        errors = rejections(
            url,
            {
                "wrong length": {"inputs": [[5.1, 3.5, 1.4]]},
                "out of range": {"inputs": [[5.1, 3.5, 1.4, 11]]},
            },
        )
    expected = "inputs must be a list of samples, each a list of 4 numbers (inputs[0]: Expected `array`"
    assert errors["wrong length"][0] == 422 and errors["wrong length"][1].startswith(expected), errors
    assert errors["out of range"][0] == 422 and "values must be in [0, 10]" in errors["out of range"][1]


def test_unknown_and_incomplete_tasks_are_one_line_errors(iris_project):
    project, python, env = iris_project.path, iris_project.python, iris_project.env
    line = one_line_error(cli(python, project, "train", "task=nope", env=env), 2)
    assert "'nope'" in line and "available tasks: breast_cancer, digits, iris" in line, line

    broken = project / "src" / PACKAGE / "tasks" / "broken.py"
    broken.write_text(BROKEN_TASK)
    try:
        line = one_line_error(cli(python, project, "train", "task=broken", env=env), 1)
    finally:
        broken.unlink()
    assert "task 'broken' lacks read_file " in line, line


def test_the_projects_full_suite_passes_through_make_test(cpu_project):
    """`make test` in the baked project, check-lock first: its slow tests, the real-server ones
    included. Its quick tests ran in this environment already, on a CPU bake with the same sources
    (test_bake.py's test_generated_fast_tests_pass[cuda_version=cpu]): running them again here cost
    about 90 s of the suite."""
    result = run_make(cpu_project, "test", "ARGS=-q -p no:cacheprovider -m slow", timeout=2400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "check-lock" in result.stdout and re.search(r"\d+ passed", result.stdout)


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


def test_check_lock_names_a_broken_install(cpu_project):
    """An emptied .dist-info (an interrupted install), one whose METADATA lacks the name and version,
    and one whose METADATA cannot be decoded: each is one line naming the folder and the fix."""
    python = cpu_project / ".venv" / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(ok(run_python(python, cpu_project, "-c", purelib)).strip())
    broken = {name: site / f"{name}-1.0.dist-info" for name in ("emptied", "nameless", "undecodable")}
    try:
        for folder in broken.values():
            folder.mkdir()
        (broken["nameless"] / "METADATA").write_text("Metadata-Version: 2.1\nSummary: no name\n")
        (broken["undecodable"] / "METADATA").write_bytes(b"Name: undecodable\xff\nVersion: 1.0\n")
        result = run_make(cpu_project, "check-lock")
    finally:
        for folder in broken.values():
            shutil.rmtree(folder, ignore_errors=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    errors = sorted(line for line in result.stderr.splitlines() if line.startswith("error: "))
    fix = ": delete that folder, then run `make sync` (or `make clean-env env` to rebuild the environment)"
    assert errors == [
        f"error: {broken['emptied']} is a broken install (no name and version in its metadata){fix}",
        f"error: {broken['nameless']} is a broken install (no name and version in its metadata){fix}",
        f"error: {broken['undecodable']} is a broken install (unreadable metadata: 'utf-8' codec can't "
        f"decode byte 0xff in position 17: invalid start byte){fix}",
    ], result.stderr
    assert run_make(cpu_project, "check-lock").returncode == 0


def test_infer_without_input_is_a_usage_error(cpu_project):
    result = run_make(cpu_project, "infer")
    assert result.returncode != 0
    assert "error: name the inputs, e.g. make infer INPUT=digit.png" in result.stderr


def without_uv() -> dict[str, str]:
    """The environment of a machine with no uv: PATH without any folder that holds one."""
    path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if not os.path.exists(os.path.join(p, "uv"))
    )
    return {**os.environ, "PATH": path}


def lock_lines(project: Path, name: str) -> list[str]:
    """A lock's lines but the one that names the program that wrote it."""
    lines = (project / "requirements" / name).read_text().splitlines()
    assert lines[1].startswith("# This file "), lines[:3]
    return lines[:1] + lines[2:]


LOCK_FILES = ("bootstrap.txt", *PROJECT_LOCKS)


def test_first_train_without_uv_installs_the_shipped_locks_and_resolves_them_the_same(cpu_project, tmp_path):
    """The default path on a machine without uv: the first `make train` installs the pinned uv with
    pip, syncs the shipped locks by hash (no resolution) and trains. The bootstrapped engine resolves
    them again, as of the lock date, into the same bytes: `make lock`, and from scratch."""
    project = bake_ok(tmp_path, cuda_version="cpu")
    shipped = {name: (project / "requirements" / name).read_text() for name in LOCK_FILES}
    result = run_make(project, "train", "ARGS=--no-progress optim.epochs=2", env=without_uv())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Installing the lock engine from requirements/bootstrap.txt (pip, hash-checked)" in result.stdout
    assert "pip compile" not in result.stdout and "piptools" not in result.stdout
    engine = subprocess.run([project / ".venv" / "bin" / "uv", "--version"], capture_output=True, text=True)
    assert engine.stdout.split()[1] == pins(project / "requirements" / "bootstrap.txt")["uv"]
    assert (project / "models" / "model.pt").is_file()
    assert not list((project / ".venv" / "lib").glob("python*/site-packages/mlflow"))  # an extra: not asked
    assert run_make(project, "check-lock", env=without_uv()).returncode == 0
    result = run_make(project, "lock", env=without_uv())  # the engine re-locks itself too
    assert result.returncode == 0, result.stderr[-2000:]
    assert ".venv/bin/uv pip compile" in result.stdout
    assert {name: (project / "requirements" / name).read_text() for name in LOCK_FILES} == shipped
    unlock(project)
    result = run_make(project, "env", env=without_uv())
    assert result.returncode == 0, result.stderr[-2000:]
    assert {name: (project / "requirements" / name).read_text() for name in LOCK_FILES} == shipped


FAKE_MICROMAMBA = """#!/bin/sh
# This machine has no conda: a stand-in that records its arguments and makes the prefix a virtual
# environment, which has what a conda one from env.yml has for this purpose (python and pip).
echo "$@" > "$(dirname "$0")/args"
while [ "$1" != --prefix ]; do shift; done
exec "$FAKE_PYTHON" -m venv "$2"
"""


def test_conda_path_bootstraps_uv_with_the_environments_pip(cpu_project, tmp_path):
    """With micromamba on PATH and no uv, the environment comes from env.yml and its own pip installs
    the pinned uv, which resolves the same locks as the shipped ones."""
    project = bake_ok(tmp_path, cuda_version="cpu")
    unlock(project)
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "micromamba").write_text(FAKE_MICROMAMBA)
    (tools / "micromamba").chmod(0o755)
    env = without_uv()
    env.update(PATH=f"{tools}{os.pathsep}{env['PATH']}", FAKE_PYTHON=sys.executable)
    result = run_make(project, "env", env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"Creating the conda environment .venv from env.yml with {tools / 'micromamba'}" in result.stdout
    assert (tools / "args").read_text().split() == [
        "create",
        "--yes",
        "--quiet",
        "--prefix",
        ".venv",
        "--file",
        "env.yml",
    ]
    assert "Installing the lock engine from requirements/bootstrap.txt (pip, hash-checked)" in result.stdout
    for name in LOCK_FILES:
        assert lock_lines(project, name) == lock_lines(cpu_project, name), name


def test_pip_tools_locker_writes_the_same_locks_as_uv(cpu_project, tmp_path):
    """LOCKER=pip-tools resolves with pip-compile (pip's --uploaded-prior-to) and syncs with pip-sync:
    the same files as uv's, byte for byte, but the line that names the program."""
    project = bake_ok(tmp_path, cuda_version="cpu")
    unlock(project)
    result = run_make(project, "env", "LOCKER=pip-tools", env=without_uv())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "piptools compile" in result.stdout and "piptools sync" in result.stdout
    assert "uv pip" not in result.stdout
    for name in LOCK_FILES:
        assert lock_lines(project, name) == lock_lines(cpu_project, name), name
    assert "autogenerated by pip-compile" in (project / "requirements" / "prod.txt").read_text()
    check = subprocess.run(
        [str(project / ".venv" / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout
    result = run_make(project, "test", "ARGS=-q -k config", env=without_uv())
    assert result.returncode == 0, result.stdout[-2000:]


def test_tampered_engine_hash_fails_in_one_line(tmp_path):
    """A bootstrap.txt whose hashes match no uv wheel: pip refuses it, make says so in one line and
    stops before locking anything."""
    project = bake_ok(tmp_path, cuda_version="cpu")
    unlock(project)
    lock = project / "requirements" / "bootstrap.txt"
    lock.write_text(re.sub(r"sha256:[0-9a-f]{8}", "sha256:00000000", lock.read_text()))
    result = run_make(project, "train", env=without_uv())
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if not line.startswith("make")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: the uv wheel pip downloaded (sha256 ")
    assert "matches no hash in requirements/bootstrap.txt" in errors[0]
    assert not (project / ".venv" / "bin" / "uv").exists()
    assert sorted(p.name for p in (project / "requirements").glob("*.txt")) == ["bootstrap.txt"]


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
