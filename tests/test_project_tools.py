"""The generated project's environment tooling: variant switch, index probe, uv sources, GPU pins,
the environment's lock."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from .conftest import CHOICES, COOKIECUTTER_JSON, INSTALLABLE_TORCH, bake_ok, run_make, torch_for


def make_dry(project, *args):
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", *args], cwd=project, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def envtool(project, *args, env=None):
    return subprocess.run(
        [sys.executable, "tools/envtool.py", *args],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture(scope="module")
def cpu_bake(tmp_path_factory):
    return bake_ok(tmp_path_factory.mktemp("tools"), cuda_version="cpu")


@pytest.mark.parametrize("cuda", CHOICES["cuda_version"])
def test_lock_and_sync_use_the_variants_torch_index(tmp_path, cuda):
    project = bake_ok(tmp_path, cuda_version=cuda)
    tag = "cpu" if cuda == "cpu" else "cu" + cuda.replace(".", "")
    url = f"https://download.pytorch.org/whl/{tag}"
    for target in ("lock", "sync"):
        assert f"check-index {url}" in make_dry(project, target)
    assert f"--torch-index '{url}'" in make_dry(project, "lock")  # locktool.Engine adds it after pip's own
    assert f"--index {url}" in make_dry(project, "sync")  # uv: after pip's own indexes
    assert f"--extra-index-url {url}" in make_dry(project, "sync", "LOCKER=pip-tools")
    prod_in = (project / "requirements" / "prod.in").read_text()
    assert f"torch=={torch_for(cuda)}" in prod_in and "download.pytorch.org" not in prod_in, (
        "the index belongs to the Makefile, never to the lock inputs"
    )
    assert (
        f"torch build {tag}" in subprocess.run(["make"], cwd=project, capture_output=True, text=True).stdout
    )


def test_a_build_the_pinned_release_lacks_is_refused_in_one_line(tmp_path):
    project = bake_ok(tmp_path, torch_version=INSTALLABLE_TORCH, cuda_version="cpu", gpu_check="skip")
    before = (project / "env.yml").read_text()
    result = envtool(project, "set-variant", "13.2")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert f"CUDA='13.2' is not a build of torch {INSTALLABLE_TORCH}" in result.stderr
    assert (project / "env.yml").read_text() == before


def test_upgrade_torch_repins_and_moves_a_build_the_release_dropped(tmp_path):
    """torch 2.14.1 with CUDA 12.6, upgraded to 2.15.0 (which dropped 12.6): prod.in re-pinned,
    env.yml moved to the release's PyPI build, and said so; an unknown release changes nothing."""
    project = bake_ok(tmp_path, torch_version="2.14.1", cuda_version="12.6", gpu_check="skip")
    files = {name: (project / name).read_text() for name in ("env.yml", "requirements/prod.in")}
    unknown = envtool(project, "upgrade-torch", "2.16.0")
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1
    assert "VERSION='2.16.0' is not a torch release in variants.py (2.15.0, 2.14.1, 2.13.0)" in unknown.stderr
    assert {name: (project / name).read_text() for name in files} == files
    result = envtool(project, "upgrade-torch", "2.15.0")
    assert result.returncode == 0, result.stderr
    assert "torch 2.15.0 publishes no cu126 wheels (only 13.2, 13.0, cpu)" in result.stdout
    assert "env.yml now pins the cu132 build" in result.stdout
    assert "torch==2.15.0" in (project / "requirements" / "prod.in").read_text()
    deps = yaml.safe_load((project / "env.yml").read_text())["dependencies"]
    assert "cuda-version=13.2" in deps
    out = make_dry(project, "upgrade-torch", "VERSION=2.15.0")
    assert "envtool.py upgrade-torch 2.15.0" in out and "rm -f requirements/prod.txt" in out


@pytest.mark.slow
def test_make_upgrade_torch_locks_the_new_release(tmp_path):
    """A release this machine cannot install is still locked (resolution only). With
    TORCH_INDEX_URL= (PyTorch's index is unreachable here) the lock takes PyPI's wheel, which for
    2.15.0 is the CUDA 13.2 build."""
    project = bake_ok(tmp_path, torch_version=INSTALLABLE_TORCH, cuda_version="13.0", gpu_check="skip")
    newest = COOKIECUTTER_JSON["torch_version"]
    result = run_make(project, "upgrade-torch", f"VERSION={newest}", "TORCH_INDEX_URL=")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Locked torch {newest}" in result.stdout
    prod = (project / "requirements" / "prod.txt").read_text()
    assert f"torch=={newest}" in prod and "--hash=sha256:" in prod
    assert "cuda-toolkit==13.2" in prod  # PyPI's torch 2.15 wheel is the CUDA 13.2 build


def test_empty_torch_index_means_pip_configuration_only(cpu_bake):
    out = make_dry(cpu_bake, "lock", "TORCH_INDEX_URL=")
    assert "download.pytorch.org" not in out and "check-index" not in out


@pytest.mark.parametrize("cuda", ["12.6", "13.0", "cpu"])
def test_variant_switch_rewrites_the_one_pin(tmp_path, cuda):
    project = bake_ok(tmp_path, cuda_version="13.0" if cuda == "cpu" else "cpu")
    result = envtool(project, "set-variant", cuda)
    assert result.returncode == 0, result.stderr
    deps = yaml.safe_load((project / "env.yml").read_text())["dependencies"]
    assert [d for d in deps if d.startswith("cuda-version")] == (
        [] if cuda == "cpu" else [f"cuda-version={cuda}"]
    )
    tag = "cpu" if cuda == "cpu" else "cu" + cuda.replace(".", "")
    assert f"https://download.pytorch.org/whl/{tag}" in make_dry(project, "lock")
    out = make_dry(project, "variant", f"CUDA={cuda}")
    assert (
        "set-variant" in out
        and "rm -f requirements/prod.txt requirements/joint.txt requirements/dev.txt" in out
    )


def test_variant_switch_rejects_unknown_builds(cpu_bake):
    before = (cpu_bake / "env.yml").read_text()
    result = envtool(cpu_bake, "set-variant", "11.8")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: CUDA='11.8' is not a build of torch {INSTALLABLE_TORCH} (requirements/prod.in); "
        "choose one of: 13.0, 12.6, cpu"
    )
    assert (cpu_bake / "env.yml").read_text() == before
    result = subprocess.run(["make", "variant"], cwd=cpu_bake, capture_output=True, text=True)
    assert result.returncode != 0 and "make variant CUDA=12.6" in result.stderr


def test_unreachable_torch_index_fails_fast_with_advice(cpu_bake):
    started = time.monotonic()
    result = envtool(cpu_bake, "check-index", "http://127.0.0.1:9/whl/cpu")
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "cannot reach the PyTorch index http://127.0.0.1:9/whl/cpu" in line
    assert "TORCH_INDEX_URL=" in line


def test_uv_gets_pips_configured_sources_pips_index_first(cpu_bake):
    """uv takes a version's hashes from the first index that has it, pip from all: pip's own index
    comes first, so the hashes are the ones pip-compile writes."""

    def uv_sources(**variables: str) -> list[str]:
        command = [sys.executable, "tools/locktool.py", "uv-sources"]
        env = {key: value for key, value in os.environ.items() if key != "PIP_INDEX_URL"}
        env.update(PIP_FIND_LINKS="/srv/wheels", **variables)
        result = subprocess.run(command, cwd=cpu_bake, capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    extra = "https://a.example/simple https://b.example/simple"
    assert uv_sources(PIP_INDEX_URL="https://mirror.example/simple", PIP_EXTRA_INDEX_URL=extra) == [
        *("--index", "https://mirror.example/simple"),
        *("--index", "https://a.example/simple", "--index", "https://b.example/simple"),
        *("--default-index", "https://mirror.example/simple", "--find-links", "/srv/wheels"),
    ]
    assert uv_sources(PIP_EXTRA_INDEX_URL=extra)[:2] == ["--index", "https://pypi.org/simple"]


def test_unknown_locker_is_one_line(cpu_bake):
    result = subprocess.run(["make", "env", "LOCKER=poetry"], cwd=cpu_bake, capture_output=True, text=True)
    assert result.returncode == 2
    assert "LOCKER=poetry is not a lock engine; use LOCKER=uv or LOCKER=pip-tools" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (cpu_bake / ".venv").exists()


def test_missing_engine_lock_is_one_line(tmp_path):
    project = bake_ok(tmp_path, cuda_version="cpu")
    (project / "requirements" / "bootstrap.txt").unlink()
    result = subprocess.run(["make", "train"], cwd=project, capture_output=True, text=True)
    assert result.returncode != 0
    (line,) = [line for line in result.stderr.splitlines() if not line.startswith("make")]
    assert line == (
        "error: requirements/bootstrap.txt is missing: restore it (git checkout requirements/bootstrap.txt); "
        "it pins the engine that writes the other locks"
    )
    assert not (project / ".venv").exists()


def test_missing_python_gets_one_clear_line(cpu_bake):
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # no pyenv, no uv, no conda
    result = subprocess.run(
        ["make", "env", "PYTHON_VERSION=3.99", "CONDA="],
        cwd=cpu_bake,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode != 0
    assert "error: python3.99 not found" in result.stderr
    assert not (cpu_bake / ".venv").exists()


def test_train_passes_seed_and_resume(cpu_bake):
    def train_line(*args: str) -> str:
        return " ".join(make_dry(cpu_bake, "train", *args).splitlines()[-1].split())

    assert train_line("SEED=7").endswith("train seed=7")
    assert train_line("RESUME=auto").endswith("train --resume auto")
    assert train_line("CONFIG=other.yaml").endswith("train --config other.yaml")


def test_env_lock_waits_for_the_holder_and_leaves_nothing(cpu_bake):
    """`envtool locked` (what the Makefile wraps environment work in) waits while another holds the
    lock, says so once, passes the command's exit code through and removes the lock file."""
    lock = cpu_bake / ".venv.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        waiter = subprocess.Popen(
            [sys.executable, "tools/envtool.py", "locked", ".venv.lock", "sh", "-c", "exit 3"],
            cwd=cpu_bake,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1)
        assert waiter.poll() is None, "ran while the lock was held"
    assert waiter.wait(timeout=30) == 3
    (line,) = waiter.stderr.read().splitlines()
    assert line == "waiting for another make to finish with the environment (.venv.lock)"
    assert not lock.exists()


@pytest.mark.slow
def test_two_first_makes_at_once_share_one_environment(tmp_path):
    """Two first `make env` at the same moment (two first `make train`): one creates and syncs the
    environment, the other waits for it and finds it up to date; both succeed."""
    project = bake_ok(tmp_path, cuda_version="cpu")
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: run_make(project, "env"), range(2)))
    elapsed = time.monotonic() - started
    for result in results:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    output = "".join(r.stdout for r in results)
    assert output.count("Creating .venv") == 1 and output.count("sync --quiet") == 1, output
    waited = [r for r in results if "waiting for another make to finish with the environment" in r.stderr]
    assert len(waited) == 1 and "'.venv/.synced' is up to date" in waited[0].stdout, (results, elapsed)
    assert not (project / ".venv.lock").exists()
    check = run_make(project, "check-lock")
    assert check.returncode == 0, check.stderr
    python = project / ".venv" / "bin" / "python"
    imported = subprocess.run(
        [python, "-c", "import torch, digit_classifier"], capture_output=True, text=True, timeout=120
    )
    assert imported.returncode == 0, imported.stderr
