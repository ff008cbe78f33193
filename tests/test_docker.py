"""The generated Dockerfile and compose file: linted and validated for every build, and (slow) built
and run for real on a local engine with a registry-free base image."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from .conftest import CHOICES, bake_ok, free_port, run_make
from .containers import (
    Unavailable,
    build_settings,
    docker,
    docker_engine,
    ensure_python_base,
    image_ids,
    remove_images_since,
)

BIN = Path(sys.executable).parent
COMPOSE_ENV = {"PYTHON_VERSION": "3.11", "TORCH_INDEX_URL": "", "DOCKER_UID": "1000", "DOCKER_GID": "1000"}
TABULAR_MODEL = "models/breast_cancer.pt"
# argv[1] <- three malignant and three benign tumours of scikit-learn's data, as CSV with its header.
TUMOUR_ROWS = """
import sys
import numpy as np
from sklearn.datasets import load_breast_cancer
data = load_breast_cancer()
rows = np.r_[np.flatnonzero(data.target == 0)[:3], np.flatnonzero(data.target == 1)[:3]]
np.savetxt(sys.argv[1], data.data[rows], delimiter=",", header=",".join(data.feature_names), comments="")
"""


@pytest.fixture(
    scope="module", params=CHOICES["cuda_version"], ids=[f"cuda={c}" for c in CHOICES["cuda_version"]]
)
def variant(request, tmp_path_factory):
    return request.param, bake_ok(
        tmp_path_factory.mktemp("docker"), cuda_version=request.param, gpu_check="skip"
    )


def test_hadolint_clean(variant):
    _, project = variant
    result = subprocess.run(
        [str(BIN / "hadolint"), "Dockerfile"], cwd=project, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def compose_config(project: Path, **env: str) -> subprocess.CompletedProcess:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (make test installs Debian's docker-compose)")
    return subprocess.run(
        ["docker-compose", "config"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, **COMPOSE_ENV, **env},
    )


def test_compose_config_accepts_it_with_gpu_reservations_per_build(variant):
    cuda, project = variant
    result = compose_config(project)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name, service in services.items():
        assert service["shm_size"] in ("2gb", "2g", 2147483648), name
        assert service["user"] == "1000:1000"
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        gpu = cuda != "cpu" and not name.endswith("-cpu")
        assert bool(devices) == gpu, name
        if gpu:
            assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert {"train", "infer", "gpu-check"} <= services.keys()
    if cuda != "cpu":
        assert {"train-cpu", "infer-cpu"} <= services.keys()
        two = yaml.safe_load(compose_config(project, GPU_COUNT="2").stdout)["services"]["train"]
        assert two["deploy"]["resources"]["reservations"]["devices"][0]["count"] in (2, "2")
    assert "/app/models" not in json.dumps(services["infer"].get("volumes", [])), (
        "infer uses the baked weights"
    )


def test_compose_config_rejects_a_typo(tmp_path):
    broken = bake_ok(tmp_path, cuda_version="13.0", gpu_check="skip")
    path = broken / "docker-compose.yml"
    path.write_text(path.read_text().replace("capabilities:", "capabilites:"))
    result = compose_config(broken)
    assert result.returncode != 0 and "capabilites" in result.stderr


def test_compose_schema(variant):
    _, project = variant
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_without_make_names_the_missing_setting(variant):
    _, project = variant
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed")
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_VERSION"}
    result = subprocess.run(
        ["docker-compose", "config"], cwd=project, capture_output=True, text=True, env=env
    )
    assert result.returncode != 0 and "PYTHON_VERSION" in result.stderr and "set by make" in result.stderr


def test_docker_gpu_stops_at_once_without_the_toolkit(variant):
    cuda, project = variant
    env = {**os.environ, "PATH": "/usr/local/bin:/usr/bin:/bin"}  # no nvidia-ctk here
    result = subprocess.run(
        ["make", "docker-gpu"], cwd=project, capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode != 0
    if cuda == "cpu":
        assert "this project uses the CPU build" in result.stderr
        return
    if "FAIL  container_toolkit" not in result.stdout:
        pytest.skip("this machine has the NVIDIA Container Toolkit")
    assert "NVIDIA Container Toolkit not found" in result.stdout
    assert "docker build" not in result.stdout and "could not select device driver" not in result.stderr


# --- real builds --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(docker_engine(tmp_path_factory.mktemp("engine")))
            ensure_python_base("3.11")
        except Unavailable as reason:
            pytest.skip(f"no container engine here: {reason}")
        yield


@pytest.mark.slow
@pytest.mark.docker
def test_build_and_run_the_cpu_image(engine, cpu_project, tmp_path):
    project, image = cpu_project, f"template-test-{uuid.uuid4().hex[:8]}"
    uid = gid = "4242"
    (project / "data" / "private.csv").write_text("secret\n")
    (project / ".env").write_text("TOKEN=secret\n")
    with contextlib.ExitStack() as stack:
        settings = [
            *stack.enter_context(build_settings()),
            f"IMAGE={image}",
            f"DOCKER_UID={uid}",
            f"DOCKER_GID={gid}",
        ]
        before = image_ids()
        stack.callback(remove_images_since, before)  # the tagged image and its dependency stages
        stack.callback(lambda: run_make(project, "docker-clean", *settings))

        build_and_inspect(project, image, settings, uid)
        infer_a_digit_from_the_baked_weights(project, image)
        infer_tabular_rows_with_a_mounted_model(project, image)
        train_through_compose(project, settings, uid, gid, stack)
        rebuild_after_a_code_change(project, settings, stack)
        serve_through_compose(project, image, uid, gid, stack)


def build_and_inspect(project: Path, image: str, settings: list[str], uid: str) -> None:
    """The build, its labels, its user, and nothing private or bulky in the image."""
    result = run_make(project, "build", *settings)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    labels = json.loads(docker("image", "inspect", f"{image}:latest").stdout)[0]["Config"]["Labels"]
    lock_sha = subprocess.run(
        ["sha256sum", "requirements/prod.txt"], cwd=project, capture_output=True, text=True
    ).stdout[:64]
    assert labels["digit_classifier.lock-sha256"] == lock_sha
    assert labels["org.opencontainers.image.revision"]

    # not root, and nothing private or bulky in the image
    assert docker("run", "--rm", "--entrypoint", "id", f"{image}:latest", "-u").stdout.strip() == uid
    listing = docker("run", "--rm", "--entrypoint", "find", f"{image}:latest", "/app").stdout
    assert "private.csv" not in listing and ".env" not in listing and ".venv" not in listing
    assert "/app/models/model.pt" in listing and "/app/src/digit_classifier/cli.py" in listing
    # the build-time CA bundle stayed in the dependency stage
    assert docker("run", "--rm", "--entrypoint", "ls", f"{image}:latest", "/build").returncode != 0
    assert "ca/" not in docker("history", "--no-trunc", f"{image}:latest").stdout


def infer_a_digit_from_the_baked_weights(project: Path, image: str) -> None:
    """No volume at all: a digit arrives on standard input."""
    digit = project / "data" / "digit.npy"
    subprocess.run(
        [
            str(project / ".venv/bin/python"),
            "-c",
            "import numpy as np; from sklearn.datasets import load_digits; d = load_digits();"
            f"np.save('{digit}', d.images[d.target == 7][0])",
        ],
        check=True,
    )
    infer = subprocess.run(
        ["docker", "run", "--rm", "-i", f"{image}:latest", "infer", "--json", "-"],
        input=digit.read_bytes(),
        capture_output=True,
        timeout=300,
    )
    assert infer.returncode == 0, infer.stderr
    assert json.loads(infer.stdout)["label"] == 7


def infer_tabular_rows_with_a_mounted_model(project: Path, image: str) -> None:
    """The breast-cancer model, trained on the host and mounted read-only: CSV rows (header
    included) on standard input get the host's predictions."""
    model = project / TABULAR_MODEL
    if not model.is_file():
        args = f"ARGS=task=breast_cancer output.model_path={TABULAR_MODEL} optim.epochs=5 --no-progress"
        result = run_make(project, "train", args)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Owned by whoever trained it (root here, not the image's user): readable all the same.
    rows = project / "data" / "tumours.csv"
    python = str(project / ".venv" / "bin" / "python")
    subprocess.run([python, "-c", TUMOUR_ROWS, str(rows)], check=True)
    host = subprocess.run(
        [python, "-m", "digit_classifier", "infer", "--model", TABULAR_MODEL, "--json", str(rows)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert host.returncode == 0, host.stderr
    infer = ["infer", "--model", f"/models/{model.name}", "--json", "-"]
    container = subprocess.run(
        ["docker", "run", "--rm", "-i", "-v", f"{project / 'models'}:/models:ro", f"{image}:latest", *infer],
        input=rows.read_text(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert container.returncode == 0, container.stderr
    ours, theirs = ([json.loads(line) for line in r.stdout.splitlines()] for r in (host, container))
    assert len(ours) == len(theirs) == 6
    assert [p["class"] for p in theirs] == [p["class"] for p in ours]
    assert {p["class"] for p in ours} <= {"malignant", "benign"}
    assert [p["confidence"] for p in theirs] == pytest.approx([p["confidence"] for p in ours], abs=1e-5)


def train_through_compose(
    project: Path, settings: list[str], uid: str, gid: str, stack: contextlib.ExitStack
) -> None:
    """Training through compose, with torchrun's two processes, writes to the mounted folders as the
    invoking user."""
    for folder in ("data", "runs", "models"):
        shutil.chown(project / folder, int(uid), int(gid))
    stack.callback(
        lambda: subprocess.run(["chown", "-R", "root:root", "data", "runs", "models"], cwd=project)
    )
    runs_before = set((project / "runs").iterdir())
    result = run_make(project, "docker-cpu", "NPROC=2", "ARGS=optim.epochs=1 --no-progress", *settings)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (new_run,) = set((project / "runs").iterdir()) - runs_before
    assert json.loads((new_run / "manifest.json").read_text())["launch"]["world_size"] == 2
    for path in [new_run, *new_run.iterdir(), project / "models" / "model.pt"]:
        assert (path.stat().st_uid, path.stat().st_gid) == (int(uid), int(gid)), path


def rebuild_after_a_code_change(project: Path, settings: list[str], stack: contextlib.ExitStack) -> None:
    """A source-only change rebuilds without reinstalling the dependencies."""
    source = project / "src" / "digit_classifier" / "cli.py"
    original = source.read_text()
    stack.callback(source.write_text, original)
    source.write_text(original + "\n# a code change\n")
    result = run_make(project, "build", *settings)
    assert result.returncode == 0, result.stderr[-3000:]
    after_pip = result.stdout.split("pip install --require-hashes", 1)[1].split("Step", 1)[0]
    assert re.search(r"Using cache|CACHED", after_pip), "the dependency layer was rebuilt"


def serve_through_compose(project: Path, image: str, uid: str, gid: str, stack: contextlib.ExitStack) -> None:
    """The server in the container: published port, healthcheck, same predictions."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHON_VERSION": "3.11",
        "IMAGE": image,
        "PORT": str(port),
        "DOCKER_UID": uid,
        "DOCKER_GID": gid,
    }
    compose = ["docker-compose", "--project-name", image]
    up = subprocess.run(
        [*compose, "up", "--detach", "--no-build", "serve"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    stack.callback(
        lambda: subprocess.run(
            [*compose, "down", "--remove-orphans"], cwd=project, env=env, capture_output=True, timeout=300
        )
    )
    assert up.returncode == 0, up.stderr
    container = subprocess.run(
        [*compose, "ps", "--quiet", "serve"], cwd=project, env=env, capture_output=True, text=True
    ).stdout.strip()
    deadline = time.monotonic() + 120
    while (
        health := docker("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()
    ) != "healthy":
        assert health in ("starting", "") and time.monotonic() < deadline, health
        time.sleep(1)
    sample = {"inputs": [[[0, 0, 5, 13, 9, 1, 0, 0]] * 8]}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict",
        data=json.dumps(sample).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    assert len(answer["predictions"]) == 1 and len(answer["probabilities"][0]) == 10
