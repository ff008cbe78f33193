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
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .conftest import CHOICES, TEMPLATE, bake_ok, free_port, read_jsonc, run_make, wait_for_jupyter_to_refuse
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
COMPOSE_VARIABLES = (
    "PYTHON_VERSION",
    "TORCH_INDEX_URL",
    "FIND_LINKS",
    "IMAGE",
    "DOCKER_UID",
    "DOCKER_GID",
    "GPU_COUNT",
    "COMPOSE_FILE",
    "PORT",
)


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


def port_mapping(port: str | dict) -> tuple[str, int, int]:
    """(host address, published port, container port) from `config` output, short syntax (Compose v1)
    or long (v2)."""
    if isinstance(port, dict):
        return port.get("host_ip", ""), int(port["published"]), int(port["target"])
    host, published, target = port.split("/")[0].rsplit(":", 2)
    return host, int(published), int(target)


def mount(volume: str | dict) -> tuple[str, str]:
    """(source, target) of a bind mount from `config` output, either syntax."""
    if isinstance(volume, dict):
        return volume["source"], volume["target"]
    source, target = volume.split(":")[:2]
    return source, target


def reservations(services: dict) -> dict[str, list]:
    """Each service's GPU device reservations (empty: none)."""
    return {
        name: service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        for name, service in services.items()
    }


def test_compose_works_on_its_own_and_gpus_come_from_the_overlay(variant):
    cuda, project = variant
    result = compose_config(project, "docker-compose.yml")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services.keys() == {"train", "infer", "serve", "gpu-check", "dev", "notebook"}
    for name, service in services.items():
        assert service["shm_size"] in ("2gb", "2g", 2147483648), name
        assert service["user"] == f"{DOCKER_IDS[0]}:{DOCKER_IDS[1]}", name
        assert service["build"]["args"]["PYTHON_VERSION"] == "3.11", name
        dev = name in ("dev", "notebook")
        assert service["build"]["target"] == ("dev" if dev else "runtime"), name
        assert service["image"] == f"{project.name}{'-dev' if dev else ''}:latest", name
    assert not any(reservations(services).values()), "the base file is the same for every build"
    assert "/app/models" not in json.dumps(services["infer"].get("volumes", [])), (
        "infer uses the baked weights"
    )
    # Jupyter is published on loopback only; the dev services see the whole project.
    (port,) = services["notebook"]["ports"]
    assert port_mapping(port) == ("127.0.0.1", 8888, 8888)
    for name in ("dev", "notebook"):
        (volume,) = services[name]["volumes"]
        assert mount(volume) == (str(project), "/app"), name
    # With no -f, .env's COMPOSE_FILE adds the GPU overlay exactly when env.yml pins a CUDA build.
    plain = compose_config(project)
    assert plain.returncode == 0, plain.stderr
    reserved = reservations(yaml.safe_load(plain.stdout)["services"])
    assert all(reserved.values()) if cuda != "cpu" else not any(reserved.values()), reserved
    gpu = compose_config(project, *COMPOSE_FILES, GPU_COUNT="2")
    assert gpu.returncode == 0, gpu.stderr
    gpu_services = yaml.safe_load(gpu.stdout)["services"]
    assert gpu_services.keys() == services.keys()
    for name, devices in reservations(gpu_services).items():
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


def test_the_devcontainer_is_the_compose_dev_service(variant):
    """devcontainer.json names no compose file: the Dev Containers CLI then reads .env's COMPOSE_FILE,
    as compose itself does, so the variant (and its GPU overlay) carries through."""
    _, project = variant
    config = read_jsonc(project / ".devcontainer" / "devcontainer.json")
    assert config["dockerComposeFile"] == [] and config["service"] == config["runServices"][0] == "dev"
    assert config["initializeCommand"].startswith("make") and config["initializeCommand"].endswith(".env")
    result = compose_config(project)
    dev = yaml.safe_load(result.stdout)["services"]["dev"]
    assert (str(project), config["workspaceFolder"]) in [mount(v) for v in dev["volumes"]]


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
    time, so `make variant` is the whole switch. (The locks are per build: the CPU bake ships with
    tested ones, the GPU bake resolves its own; tests/test_locks.py covers both.)"""
    cpu, gpu = (bake_ok(tmp_path / cuda, cuda_version=cuda, gpu_check="skip") for cuda in ("cpu", "13.0"))
    for project in (cpu, gpu):
        for name in ("joint", "prod", "dev", "mlflow"):
            (project / "requirements" / f"{name}.txt").unlink(missing_ok=True)
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
        gpu = cuda != "cpu"
        for target, service in (("docker-train", "run --rm train train"), ("docker-notebook", "up notebook")):
            dry = subprocess.run(["make", "-n", target], cwd=project, capture_output=True, text=True)
            (run,) = [line.split() for line in dry.stdout.splitlines() if service in line]
            files = [run[i + 1] for i, arg in enumerate(run) if arg == "-f"]
            assert files == list(COMPOSE_FILES if gpu else COMPOSE_FILES[:1]), run
            assert ("python3 -m digit_classifier.gpu --docker" in dry.stdout) == gpu, target
            config = compose_config(project, *files)
            assert config.returncode == 0, config.stderr
            reserved = reservations(yaml.safe_load(config.stdout)["services"])
            assert bool(reserved["train"]) == bool(reserved["notebook"]) == gpu, reserved
        dotenv = (project / ".env").read_text()
        assert f"COMPOSE_FILE={':'.join(COMPOSE_FILES if gpu else COMPOSE_FILES[:1])}" in dotenv


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
def engine(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A running engine, the base image, and the build variables every build here shares (one wheel
    mirror URL, so later builds reuse the layers of earlier ones); the images made are removed after."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(docker_engine(tmp_path_factory.mktemp("engine")))
            ensure_python_base("3.11")
        except Unavailable as reason:
            pytest.skip(f"no container engine here: {reason}")
        stack.callback(remove_images_since, image_ids())  # tagged images and build stages alike
        yield stack.enter_context(build_settings())


def compose_env(settings: dict[str, str], **extra: str) -> dict[str, str]:
    """The environment of a user running plain compose in the project, plus the build variables a
    machine like this one needs (compose passes FIND_LINKS and TORCH_INDEX_URL on to the build)."""
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES}
    return {**clean, "FIND_LINKS": settings.get("FIND_LINKS", ""), "TORCH_INDEX_URL": "", **extra}


@contextlib.contextmanager
def extra_ca(project: Path, settings: dict[str, str]) -> Iterator[None]:
    """The proxy's CA in docker/ca/, as a user behind one puts it there for plain compose builds."""
    pem = project / "docker" / "ca" / "extra-ca.pem"
    if "CA_BUNDLE" in settings:
        shutil.copy(settings["CA_BUNDLE"], pem)
    try:
        yield
    finally:
        pem.unlink(missing_ok=True)


@pytest.mark.slow
@pytest.mark.docker
def test_build_and_run_the_cpu_image(engine, cpu_project, tmp_path):
    project, image = cpu_project, f"template-test-{uuid.uuid4().hex[:8]}"
    uid = gid = "4242"
    (project / "data" / "private.csv").write_text("secret\n")
    dotenv = project / ".env"
    saved = dotenv.read_text()
    dotenv.write_text(saved + "TOKEN=secret\n")
    with contextlib.ExitStack() as stack:
        stack.callback(dotenv.write_text, saved)
        variables = {**engine, "IMAGE": image, "DOCKER_UID": uid, "DOCKER_GID": gid}
        settings = [f"{key}={value}" for key, value in variables.items()]
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
    after_pip = result.stdout.split("pip-install --no-compile", 1)[1].split("Step", 1)[0]
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


@pytest.mark.slow
@pytest.mark.docker
def test_plain_compose_builds_both_images_and_runs_the_dev_services(engine, cpu_project):
    """No make: `docker compose build` makes the runtime image and the dev stage from .env alone; the
    dev image runs the project's tools and tests as a non-root user; Jupyter is published on loopback
    only and asks for its token."""
    project, image = cpu_project, f"template-test-{uuid.uuid4().hex[:8]}"
    trained = run_make(project, "models/model.pt", "ARGS=optim.epochs=1 --no-progress")  # no make below
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    env = compose_env(engine, IMAGE=image, PORT=str(free_port()))
    compose = ["docker-compose", "--project-name", image]

    def run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*compose, *args], cwd=project, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    with contextlib.ExitStack() as stack:
        stack.enter_context(extra_ca(project, engine))
        stack.callback(
            lambda: subprocess.run([*compose, "down", "--remove-orphans"], cwd=project, env=env, timeout=300)
        )
        run("build", "train")
        run("build", "dev")
        assert "digits" in run("run", "--rm", "train", "tasks").stdout
        tools = run("run", "--rm", "dev", "bash", "-c", "id -u && pytest --version && jupyter --version")
        assert tools.stdout.split()[0] != "0" and "pytest" in tools.stdout and "jupyterlab" in tools.stdout
        # make in the dev image uses the image's environment, checked against the mounted locks
        tests = run("run", "--rm", "dev", "make", "test", "ARGS=-q -p no:cacheprovider tests/test_config.py")
        assert "locks match their inputs and this environment" in tests.stdout
        assert re.search(r"\d+ passed", tests.stdout), tests.stdout[-2000:]
        sync = [*compose, "run", "--rm", "dev", "make", "sync"]
        refused = subprocess.run(sync, cwd=project, env=env, capture_output=True, text=True)
        assert refused.returncode == 2 and "rebuild the dev image" in refused.stderr
        notebook_service_asks_for_its_token(run, env["PORT"])


def notebook_service_asks_for_its_token(run, port: str) -> None:
    run("up", "--detach", "notebook")
    assert run("port", "notebook", "8888").stdout.strip() == f"127.0.0.1:{port}"
    url = f"http://127.0.0.1:{port}/api/kernelspecs"
    wait_for_jupyter_to_refuse(url)
    token = re.search(r"token=([0-9a-f]+)", run("logs", "notebook").stdout)
    assert token, "no token in the notebook service's log"
    with urllib.request.urlopen(f"{url}?token={token[1]}", timeout=10) as response:
        assert "python3" in json.loads(response.read())["kernelspecs"]


DEVCONTAINER_CLI = TEMPLATE / "tests" / "node" / "node_modules" / ".bin" / "devcontainer"


@pytest.mark.slow
@pytest.mark.docker
def test_the_dev_container_builds_and_runs_with_the_dev_containers_cli(engine, tmp_path):
    """The real Dev Containers CLI: build, up and exec as the non-root user, with make and the image's
    environment inside. Without .env (a fresh clone), `up` gets it from initializeCommand."""
    if not DEVCONTAINER_CLI.exists():
        pytest.skip("the Dev Containers CLI is not installed (make test installs it with npm)")
    project = bake_ok(tmp_path, cuda_version="cpu", gpu_check="skip")
    result = run_make(project, "lock", "models/model.pt", "ARGS=optim.epochs=1 --no-progress")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (project / ".env").unlink()
    env = compose_env(engine, IMAGE=f"template-test-{uuid.uuid4().hex[:8]}")

    def devcontainer(command: str, *args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(DEVCONTAINER_CLI), command, "--workspace-folder", str(project), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    with contextlib.ExitStack() as stack:
        stack.enter_context(extra_ca(project, engine))
        up = json.loads(devcontainer("up").stdout.splitlines()[-1])  # builds the image first
        name = up["composeProjectName"]
        stack.callback(
            lambda: subprocess.run(["docker-compose", "--project-name", name, "down"], cwd=project, env=env)
        )
        assert up["outcome"] == "success" and up["remoteWorkspaceFolder"] == "/app"
        inside = devcontainer("exec", "bash", "-c", "id -u; pwd; make --no-print-directory check-lock")
        uid, cwd, *_ = inside.stdout.split()
        assert uid != "0" and cwd == "/app", inside.stdout
        assert "locks match their inputs and this environment" in inside.stdout
        assert json.loads(devcontainer("build").stdout.splitlines()[-1])["outcome"] == "success"
