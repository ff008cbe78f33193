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
# The IDs the container runs as: the user's, or 1000 for root (as the Makefile decides).
DOCKER_IDS = ("1000", "1000") if os.getuid() == 0 else (str(os.getuid()), str(os.getgid()))
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


COMPOSE_FILES = ("docker-compose.yml", "compose.gpu.yaml")
COMPOSE_VARIABLES = ("PYTHON_VERSION", "TORCH_INDEX_URL", "IMAGE", "DOCKER_UID", "DOCKER_GID", "GPU_COUNT")


def compose_config(project: Path, *files: str, **env: str) -> subprocess.CompletedProcess:
    """`docker-compose config` as a user would run it in the project: no compose variable exported
    (they come from the project's .env), `env` aside."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (make test installs Debian's docker-compose)")
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES}
    return subprocess.run(
        ["docker-compose", *(arg for name in files for arg in ("-f", name)), "config"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**clean, **env},
    )


def reservations(services: dict) -> dict[str, list]:
    """Each service's GPU device reservations (empty: none)."""
    return {
        name: service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        for name, service in services.items()
    }


def test_compose_works_on_its_own_and_gpus_come_from_the_overlay(variant):
    _, project = variant
    result = compose_config(project)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services.keys() == {"train", "infer", "serve", "gpu-check"}
    for name, service in services.items():
        assert service["shm_size"] in ("2gb", "2g", 2147483648), name
        assert service["user"] == f"{DOCKER_IDS[0]}:{DOCKER_IDS[1]}", name
        assert service["build"]["args"]["PYTHON_VERSION"] == "3.11", name
    assert not any(reservations(services).values()), "the base file is the same for every build"
    assert "/app/models" not in json.dumps(services["infer"].get("volumes", [])), (
        "infer uses the baked weights"
    )
    gpu = compose_config(project, *COMPOSE_FILES, GPU_COUNT="2")
    assert gpu.returncode == 0, gpu.stderr
    for name, devices in reservations(yaml.safe_load(gpu.stdout)["services"]).items():
        assert devices and devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"], name
        assert devices[0]["count"] in (2, "2"), name


def test_compose_config_rejects_a_typo(tmp_path):
    broken = bake_ok(tmp_path, cuda_version="13.0", gpu_check="skip")
    path = broken / "compose.gpu.yaml"
    path.write_text(path.read_text().replace("capabilities:", "capabilites:"))
    result = compose_config(broken, *COMPOSE_FILES)
    assert result.returncode != 0 and "capabilites" in result.stderr


def test_compose_schema(variant):
    _, project = variant
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *COMPOSE_FILES],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_without_its_env_file_names_the_fix(variant):
    _, project = variant
    dotenv = project / ".env"
    saved = dotenv.read_text()
    dotenv.unlink()
    try:
        result = compose_config(project)
        assert result.returncode != 0 and "PYTHON_VERSION" in result.stderr and "make .env" in result.stderr
    finally:
        dotenv.write_text(saved)


def test_files_differ_across_builds_only_where_the_build_is_stated(tmp_path):
    """Nothing about CPU vs GPU is rendered outside env.yml: the Makefile and compose decide at run
    time, so `make variant` is the whole switch."""
    cpu, gpu = (bake_ok(tmp_path / cuda, cuda_version=cuda, gpu_check="skip") for cuda in ("cpu", "13.0"))
    files = {str(p.relative_to(cpu)) for p in cpu.rglob("*") if p.is_file()}
    assert files == {str(p.relative_to(gpu)) for p in gpu.rglob("*") if p.is_file()}
    differ = {name for name in files if (cpu / name).read_bytes() != (gpu / name).read_bytes()}
    assert differ == {"env.yml", ".env", ".cruft.json", "README.md"}
    readmes = [(project / "README.md").read_text().splitlines() for project in (cpu, gpu)]
    changed = [(a, b) for a, b in zip(*readmes, strict=True) if a != b]
    assert len(changed) == 1 and "(CPU build)" in changed[0][0] and "(CUDA 13.0 build)" in changed[0][1]


def test_a_variant_switch_carries_through_to_the_containers(tmp_path):
    """`make variant` re-locks with the new build's index (here unreachable: it fails fast naming it),
    and every container target and .env follow env.yml; back on the CPU build, no GPU is reserved."""
    project = bake_ok(tmp_path, cuda_version="cpu", gpu_check="skip")
    for cuda, index in (("13.0", "cu130"), ("cpu", "cpu")):
        result = subprocess.run(
            ["make", "variant", f"CUDA={cuda}"], cwd=project, capture_output=True, text=True
        )
        assert f"cannot reach the PyTorch index https://download.pytorch.org/whl/{index}" in result.stderr
        assert f"TORCH_INDEX_URL=https://download.pytorch.org/whl/{index}" in (project / ".env").read_text()
        dry = subprocess.run(["make", "-n", "docker-train"], cwd=project, capture_output=True, text=True)
        (run,) = [line.split() for line in dry.stdout.splitlines() if "run --rm train train" in line]
        files = [run[i + 1] for i, arg in enumerate(run) if arg == "-f"]
        assert files == (list(COMPOSE_FILES) if cuda != "cpu" else []), run  # [] : compose's default file
        assert ("python3 -m digit_classifier.gpu --docker" in dry.stdout) == (cuda != "cpu")
        config = compose_config(project, *files)
        assert config.returncode == 0, config.stderr
        reserved = reservations(yaml.safe_load(config.stdout)["services"])
        assert bool(reserved["train"]) == (cuda != "cpu"), reserved


def test_docker_gpu_stops_at_once_without_the_toolkit(variant):
    cuda, project = variant
    env = {**os.environ, "PATH": "/usr/local/bin:/usr/bin:/bin"}  # no nvidia-ctk here
    result = subprocess.run(
        ["make", "docker-gpu"], cwd=project, capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode != 0
    if cuda == "cpu":
        assert "env.yml pins the CPU build; make variant CUDA=13.0" in result.stderr
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
