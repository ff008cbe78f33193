"""Bake helpers, the option matrix and shared fixtures for the template's tests."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .slurm import slurm_cluster  # noqa: F401  (one cluster for the whole session)

TEMPLATE = Path(__file__).resolve().parent.parent
COOKIECUTTER_JSON = json.loads((TEMPLATE / "cookiecutter.json").read_text())
CHOICES: dict[str, list[str]] = COOKIECUTTER_JSON["_choices"]
# The torch release bakes pin unless a test names one (pyproject.toml says why).
INSTALLABLE_TORCH: str = tomllib.loads((TEMPLATE / "pyproject.toml").read_text())["tool"]["template"][
    "offline-torch"
]

sys.path.insert(0, str(TEMPLATE / "hooks"))
from answers import wheel_table  # noqa: E402  (the generated project's variants.py)

RELEASES, PINS, release_of = wheel_table().RELEASES, wheel_table().PINS, wheel_table().release_of
# The venv's tools (uv, cookiecutter) must be on PATH for baked Makefiles, however pytest was started.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
# With PYTHONDONTWRITEBYTECODE set (as on some CI machines), each of the suite's hundreds of Python
# processes would compile torch's modules afresh (about 5 s each). Their bytecode goes to one cache of
# the session's instead, outside the template (whose files cookiecutter copies) and the bakes.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="template-tests-pycache-")
atexit.register(shutil.rmtree, os.environ["PYTHONPYCACHEPREFIX"], ignore_errors=True)


def option_matrix() -> list[dict[str, str]]:
    """The defaults (torch: INSTALLABLE_TORCH), then every other allowed value of each option, one
    change at a time (a CUDA build with the newest release that publishes it)."""
    defaults = {**COOKIECUTTER_JSON, "torch_version": INSTALLABLE_TORCH}
    variants: list[dict[str, str]] = [{}]
    for key, values in CHOICES.items():
        variants += [{key: value} for value in values if value != defaults[key]]
    # gpu_check=strict stops a GPU bake on a machine without a GPU (as it should, see
    # test_gpu_preflight.py); on CI it can only bake the CPU build.
    variants = [{**v, "cuda_version": "cpu"} if v.get("gpu_check") == "strict" else v for v in variants]
    variants.append({"project_name": "Café Lab"})
    return variants


def option_id(options: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items()) or "defaults"


def torch_for(cuda_version: str | None) -> str:
    """INSTALLABLE_TORCH, or for a build its release does not publish, the newest release that does
    (a build no release publishes stays with INSTALLABLE_TORCH, for the answer checks to refuse)."""
    found = [PINS[key] for key, builds in RELEASES.items() if cuda_version in builds]
    return INSTALLABLE_TORCH if INSTALLABLE_TORCH in found or not found else found[0]


def bake(output_dir: Path, env: dict[str, str] | None = None, **answers: str) -> subprocess.CompletedProcess:
    """Run the real cookiecutter CLI, hooks included, with --no-input and the given answers
    (torch_version: torch_for(cuda_version) unless given)."""
    answers = {"torch_version": torch_for(answers.get("cuda_version")), **answers}
    args = [f"{key}={value}" for key, value in answers.items()]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cookiecutter",
            "--no-input",
            "--output-dir",
            str(output_dir),
            str(TEMPLATE),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def bake_ok(output_dir: Path, **answers: str) -> Path:
    result = bake(output_dir, **answers)
    assert result.returncode == 0, result.stdout + result.stderr
    (project,) = [p for p in output_dir.iterdir() if p.is_dir()]
    return project


def read_jsonc(path: Path) -> dict:
    """A JSON file with whole-line // comments (devcontainer.json)."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("//")]
    return json.loads("\n".join(lines))


def wait_for_jupyter_to_refuse(url: str, alive=lambda: None, timeout: float = 120) -> None:
    """Poll a Jupyter API URL until the server answers, and require that first answer to be 403: it
    wants its token. `alive` raises when the server died meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            raise AssertionError("Jupyter answered without its token")
        except urllib.error.HTTPError as refused:
            assert refused.code == 403
            return
        except (urllib.error.URLError, ConnectionError):
            alive()
            assert time.monotonic() < deadline, "Jupyter did not start"
            time.sleep(0.5)


def free_port() -> int:
    """A loopback port free right now (the kernel's pick), for a server a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_make(project: Path, *targets: str, env: dict[str, str] | None = None, timeout: int = 900):
    """`make` in a baked project as a user would run it; the torch index is pip's configuration
    (TORCH_INDEX_URL empty) because PyTorch's own index is unreachable from CI machines."""
    return subprocess.run(
        ["make", "--no-print-directory", "TORCH_INDEX_URL=", *targets],
        cwd=project,
        env=env or os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def cpu_project(tmp_path_factory) -> Path:
    """A baked CPU project whose environment `make env` built for real (the uv path), with the
    optional MLflow extra, so that every lock is installed and the project's MLflow tests run."""
    assert shutil.which("uv"), "uv comes with the template's dev requirements"
    project = bake_ok(tmp_path_factory.mktemp("cpu-project"), cuda_version="cpu")
    result = run_make(project, "env", "EXTRAS=mlflow")
    assert result.returncode == 0, result.stdout + result.stderr
    return project


@pytest.fixture(scope="session")
def project_python(cpu_project) -> Path:
    """The interpreter of a real project environment, to run any baked project's own tests."""
    return cpu_project / ".venv" / "bin" / "python"


@pytest.fixture(scope="session")
def nvml_stub(tmp_path_factory) -> Path:
    """The fake libnvidia-ml.so.1, compiled once: put it on LD_LIBRARY_PATH with nvml_stub.stub_env."""
    from .nvml_stub import build_stub

    return build_stub(tmp_path_factory.mktemp("nvml-stub"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """The generated suites of non-default variants belong to the slow run; the defaults' stays fast."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if item.originalname == "test_generated_fast_tests_pass" and callspec and callspec.id != "defaults":
            item.add_marker(pytest.mark.slow)
