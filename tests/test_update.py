"""Template updates that really apply: a project baked from an earlier commit of the template (a
temporary copy with its own git history), committed and edited by its user, takes the template's
later changes with `cruft update`, without conflicts, keeping its answers and its own edits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TEMPLATE

CRUFT = Path(sys.executable).parent / "cruft"
IDENTITY = {"GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.com"}
IDENTITY |= {"GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@example.com"}
NOT_TEMPLATE = shutil.ignore_patterns(".git", ".venv", "node_modules", "build", "__pycache__", ".*_cache")


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **IDENTITY}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def cruft(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **IDENTITY}
    return subprocess.run(
        [str(CRUFT), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def template(tmp_path) -> Path:
    """This template, as the first commit of a repository of its own."""
    repo = tmp_path / "template"
    shutil.copytree(TEMPLATE, repo, ignore=NOT_TEMPLATE)
    git(repo, "init", "--quiet")
    commit_all(repo, "v1")
    return repo


def answers(project: Path) -> dict:
    context = json.loads((project / ".cruft.json").read_text())["context"]["cookiecutter"]
    return {key: value for key, value in context.items() if not key.startswith("_")}


def test_cruft_update_applies_template_changes_and_keeps_answers_and_edits(template, tmp_path):
    command = [sys.executable, "-m", "cookiecutter", "--no-input", "--output-dir", str(tmp_path / "out")]
    command += [str(template), "project_name=Update Probe", "python_version=3.12", "gpu_check=skip"]
    command += ["torch_version=2.14.1", "cuda_version=12.6"]  # answers that differ from the defaults
    subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    project = tmp_path / "out" / "update-probe"
    git(project, "init", "--quiet")
    commit_all(project, "baked")
    with (project / "configs" / "train.yaml").open("a") as config:
        config.write("seed: 7  # the user's own change\n")
    commit_all(project, "the user's change")
    before = answers(project)
    assert cruft(project, "check").returncode == 0

    # The template moves on: a new section in the generated README, a new file, a new internal setting.
    readme = template / "{{cookiecutter.project_slug}}" / "README.md"
    readme.write_text(readme.read_text() + "\n## Added upstream\n\nA template change.\n")
    (template / "{{cookiecutter.project_slug}}" / "NOTES.md").write_text("{{ cookiecutter.project_name }}\n")
    settings = json.loads((template / "cookiecutter.json").read_text())
    settings["_name_max_length"] += 6
    (template / "cookiecutter.json").write_text(json.dumps(settings, indent=2) + "\n")
    head = commit_all(template, "v2")

    stale = cruft(project, "check")
    assert stale.returncode == 1 and "out of date" in stale.stdout
    update = cruft(project, "update", "--skip-apply-ask", "--refresh-private-variables")
    assert update.returncode == 0, update.stdout + update.stderr
    assert "Failed to apply" not in update.stdout + update.stderr
    assert not list(project.rglob("*.rej"))

    assert (project / "README.md").read_text().endswith("## Added upstream\n\nA template change.\n")
    assert (project / "NOTES.md").read_text() == "Update Probe\n"
    state = json.loads((project / ".cruft.json").read_text())
    assert state["context"]["cookiecutter"]["_name_max_length"] == settings["_name_max_length"]
    assert (project / "configs" / "train.yaml").read_text().endswith("seed: 7  # the user's own change\n")
    assert state["commit"] == head
    assert answers(project) == before
    changed = {
        line[3:] for line in git(project, "status", "--porcelain", "--untracked-files=all").splitlines()
    }
    assert changed == {".cruft.json", "README.md", "NOTES.md"}
    assert cruft(project, "check").returncode == 0
