"""Baked projects across the option matrix: files, rendering, parsing, make, lint, own tests."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .conftest import (
    CHOICES,
    COOKIECUTTER_JSON,
    bake_ok,
    option_id,
    option_matrix,
    read_jsonc,
)

MATRIX = option_matrix()
EXPECTED_FILES = [
    "README.md",
    "LICENSE",
    "Makefile",
    "env.yml",
    "pyproject.toml",
    ".gitignore",
    ".cruft.json",
    ".env",
    "Dockerfile",
    "docker-compose.yml",
    "compose.gpu.yaml",
    "docker/pip-install",
    ".devcontainer/devcontainer.json",
    ".pre-commit-config.yaml",
    ".github/workflows/ci.yml",
    ".github/dependabot.yml",
    "notebooks/example.ipynb",
    "requirements/prod.in",
    "requirements/dev.in",
    "requirements/bootstrap.in",
    "requirements/bootstrap.txt",
    "requirements/lock-date",
    "configs/train.yaml",
    "configs/serve.yaml",
    "tools/envtool.py",
    "tools/locktool.py",
    "data/.gitkeep",
    "models/.gitkeep",
    "runs/.gitkeep",
]
PACKAGE_FILES = [
    "__init__.py",
    "__main__.py",
    "cli.py",
    "config.py",
    "train.py",
    "launch.py",
    "evaluate.py",
    "predict.py",
    "serving/__init__.py",
    "serving/app.py",
    "serving/batcher.py",
    "serving/guard.py",
    "serving/logs.py",
    "serving/metrics.py",
    "serving/server.py",
    "reproducibility.py",
    "checkpoint.py",
    "device.py",
    "variants.py",
    "errors.py",
    "plots.py",
    "tasks/__init__.py",
    "tasks/base.py",
    "tasks/digits.py",
    "tasks/breast_cancer.py",
    "training/__init__.py",
    "training/loop.py",
    "training/state.py",
    "training/runs.py",
    "training/progress.py",
    "training/distributed.py",
    "gpu/__init__.py",
    "gpu/checks.py",
    "gpu/report.py",
    "gpu/snapshot.py",
    "gpu/visible.py",
]
MAX_FUNCTION_LINES = 60  # the generated code's style: a function reads on one screen
MAKE_TARGETS = [
    "help",
    "env",
    "lock",
    "check-lock",
    "sync",
    "train",
    "config",
    "tasks",
    "runs",
    "env-report",
    "evaluate",
    "gpu-check",
    "test",
    "lint",
    "format",
    "notebook",
    "clean",
    "clean-env",
]


@pytest.fixture(scope="module", params=MATRIX, ids=[option_id(o) for o in MATRIX])
def baked(request, tmp_path_factory):
    options = request.param
    project = bake_ok(tmp_path_factory.mktemp("bake"), **options)
    return options, project


@pytest.fixture(scope="module")
def default_project(tmp_path_factory) -> Path:
    return bake_ok(tmp_path_factory.mktemp("defaults"))


def package_dir(project):
    (init,) = project.glob("src/*/__init__.py")
    return init.parent


def test_expected_files(baked):
    _, project = baked
    for name in EXPECTED_FILES:
        assert (project / name).is_file(), name
    for name in PACKAGE_FILES:
        assert (package_dir(project) / name).is_file(), name


def test_nothing_left_unrendered(baked):
    _, project = baked
    for path in project.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            # ${{ ... }} is a GitHub Actions expression, not leftover Jinja
            assert not re.search(r"(?<!\$)\{\{|\{%|\{#|cookiecutter\.", text), path


def test_structured_files_parse(baked):
    options, project = baked
    env = yaml.safe_load((project / "env.yml").read_text())
    assert env["name"] == project.name
    yaml.safe_load((project / "configs" / "train.yaml").read_text())
    dotenv = dict(line.split("=", 1) for line in (project / ".env").read_text().splitlines()[1:])
    assert (
        dotenv["PYTHON_VERSION"] == options.get("python_version", "3.11") and dotenv["IMAGE"] == project.name
    )
    gpu = options.get("cuda_version", COOKIECUTTER_JSON["cuda_version"]) != "cpu"
    assert dotenv["COMPOSE_FILE"] == "docker-compose.yml" + (":compose.gpu.yaml" if gpu else "")
    assert read_jsonc(project / ".devcontainer" / "devcontainer.json")["service"] == "dev"
    notebook = json.loads((project / "notebooks" / "example.ipynb").read_text())
    assert notebook["nbformat"] == 4 and all(not cell.get("outputs") for cell in notebook["cells"])
    yaml.safe_load((project / ".pre-commit-config.yaml").read_text())
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == f">={options.get('python_version', '3.11')}"
    cruft = json.loads((project / ".cruft.json").read_text())
    answers = cruft["context"]["cookiecutter"]
    for key, value in options.items():
        assert answers[key] == value
    assert not any(k.startswith("_") and k != "_template" for k in answers)


def test_env_yml_pins_python_and_cuda(baked):
    options, project = baked
    deps = yaml.safe_load((project / "env.yml").read_text())["dependencies"]
    cuda = options.get("cuda_version", COOKIECUTTER_JSON["cuda_version"])
    assert f"python={options.get('python_version', COOKIECUTTER_JSON['python_version'])}" in deps
    cuda_pins = [d for d in deps if str(d).startswith("cuda-version")]
    assert cuda_pins == ([] if cuda == "cpu" else [f"cuda-version={cuda}"])


def test_make_dry_runs_every_target(baked):
    _, project = baked
    for target in MAKE_TARGETS:
        result = subprocess.run(["make", "-n", target], cwd=project, capture_output=True, text=True)
        assert result.returncode == 0, f"make -n {target}: {result.stderr}"
    result = subprocess.run(
        ["make", "-n", "infer", "INPUT=x.png"], cwd=project, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_make_train_passes_the_launch_settings(default_project):
    """NPROC and friends reach `train` as its torchrun options; without them it stays one process."""
    project = default_project

    def train_line(*variables: str) -> str:
        dry = subprocess.run(
            ["make", "-n", "--no-print-directory", "train", *variables],
            cwd=project,
            capture_output=True,
            text=True,
        )
        return next(line for line in dry.stdout.splitlines() if " train" in line and "-m " in line)

    assert "--nproc" not in train_line()
    assert "train --nproc 2 --max-restarts 1" in " ".join(train_line("NPROC=2", "MAX_RESTARTS=1").split())
    several = " ".join(
        train_line(
            "NPROC=4", "NNODES=2", "NODE_RANK=0", "RDZV_ENDPOINT=10.0.0.1:29500", "RDZV_ID=exp7"
        ).split()
    )
    assert "--nproc 4 --nnodes 2 --node-rank 0 --rdzv-endpoint 10.0.0.1:29500 --rdzv-id exp7" in several


def test_make_help_lists_the_life_cycle(baked):
    _, project = baked
    out = subprocess.run(["make"], cwd=project, capture_output=True, text=True, check=True).stdout
    for target in [
        "env",
        "lock",
        "sync",
        "variant",
        "train",
        "config",
        "tasks",
        "evaluate",
        "infer",
        "gpu-check",
        "test",
        "lint",
        "format",
        "clean",
    ]:
        assert re.search(rf"^  {target} ", out, re.M), target


def test_ruff_clean(baked):
    _, project = baked
    for command in (["ruff", "check", "."], ["ruff", "format", "--check", "."]):
        result = subprocess.run(command, cwd=project, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_license_matches_the_answer(baked):
    options, project = baked
    text = (project / "LICENSE").read_text()
    expected = {
        "MIT": "MIT License",
        "BSD-3-Clause": "BSD 3-Clause License",
        "Apache-2.0": "Apache License, Version 2.0",
        "Proprietary": "All rights reserved",
    }
    assert expected[options.get("open_source_license", "MIT")] in text
    assert COOKIECUTTER_JSON["author_name"] in text


# What a project's quick suite reads: two bakes equal in all of it run the same suite, so it runs
# once per distinct content (answers such as the license or the hook mode change none of it).
QUICK_SUITE_INPUTS = ("src", "tests", "configs", "tools", "env.yml", "Makefile")
quick_suites_run: dict[str, str] = {}


# python_version changes only the pins the quick suite reads, and it runs on one interpreter (the
# shared project environment's) whatever the pin: the two ends of the range stand for the middle.
MIDDLE_PYTHONS = sorted(CHOICES["python_version"], key=lambda v: tuple(map(int, v.split("."))))[1:-1]


def quick_suite_digest(project: Path) -> str:
    digest = hashlib.sha256()
    for name in QUICK_SUITE_INPUTS:
        top = project / name
        for path in sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]:
            digest.update(str(path.relative_to(project)).encode() + b"\0" + path.read_bytes())
    pytest_config = tomllib.loads((project / "pyproject.toml").read_text()).get("tool", {}).get("pytest")
    digest.update(json.dumps(pytest_config, sort_keys=True).encode())
    return digest.hexdigest()


def test_generated_fast_tests_pass(baked, project_python):
    """Every variant's own quick suite in a real project environment (the defaults' run is fast; the
    full suite, servers included, runs as `make test` in the end-to-end tests)."""
    options, project = baked
    if options.get("python_version") in MIDDLE_PYTHONS:
        pytest.skip("the quick suite runs on one interpreter; the oldest and newest pins bound this one")
    digest = quick_suite_digest(project)
    if digest in quick_suites_run:
        pytest.skip(
            f"what the quick suite reads equals the {quick_suites_run[digest]} bake's; it passed there"
        )
    result = subprocess.run(
        [str(project_python), "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", result.stdout)
    quick_suites_run[digest] = option_id(options)


def functions(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    """Every function and method under `node`, named as `Class.method` or `outer.inner`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                yield name, child
            yield from functions(child, f"{name}.")
        else:
            yield from functions(child, prefix)


def long_functions(root: Path) -> list[str]:
    """`file:function (N lines)` for each function longer than MAX_FUNCTION_LINES, counted from its
    `def` line (decorators excluded) to its last line."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for name, node in functions(ast.parse(path.read_text(), filename=str(path))):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(root)}:{name} ({lines} lines)")
    return found


def test_long_functions_are_found_and_named(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))
    (tmp_path / "mod.py").write_text(
        f"class A:\n    @staticmethod\n    def fits():\n{body.replace('    ', '        ')}\n"
        f"async def too_long():\n{body}    x = 0\n"
    )
    assert long_functions(tmp_path) == [f"mod.py:too_long ({MAX_FUNCTION_LINES + 1} lines)"]


def test_no_generated_function_is_too_long(default_project):
    found = long_functions(default_project / "src")
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(found)
