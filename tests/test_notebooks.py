"""The example notebook and its tooling, for real (slow): executed headless with nbclient and a real
kernel after a short training run, Jupyter started by `make notebook` (loopback, token), and the
pre-commit hooks on a fresh bake: all pass, each catches its mistake, notebook outputs are stripped."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import urllib.error
import urllib.request

import pytest

from .conftest import bake_ok, free_port, run_make, wait_for_jupyter_to_refuse

pytestmark = pytest.mark.slow

EXECUTE = """
import sys
import nbformat
from nbclient import NotebookClient

notebook = nbformat.read(sys.argv[1], as_version=4)
where = {"metadata": {"path": "notebooks"}}  # the kernel's working folder, as Jupyter gives it
NotebookClient(notebook, timeout=300, kernel_name="python3", resources=where).execute()
nbformat.write(notebook, sys.argv[2])
"""


def test_the_example_notebook_runs_headless_after_training(cpu_project, project_python, tmp_path):
    model = cpu_project / "models" / "model.pt"
    if not model.is_file():
        result = run_make(cpu_project, "train", "ARGS=optim.epochs=2 --no-progress")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    executed = tmp_path / "executed.ipynb"
    result = subprocess.run(
        [str(project_python), "-c", EXECUTE, "notebooks/example.ipynb", str(executed)],
        cwd=cpu_project,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    code = [cell for cell in json.loads(executed.read_text())["cells"] if cell["cell_type"] == "code"]
    setup, predictions, curve = code
    outputs = [output for cell in code for output in cell["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    printed = "".join("".join(o.get("text", "")) for o in setup["outputs"])  # a string or lines
    assert "task digits" in printed and "test accuracy" in printed
    for plot in (predictions, curve):  # plots inline, as PNG
        assert any("image/png" in o.get("data", {}) for o in plot["outputs"]), plot["source"]


def test_make_notebook_listens_on_loopback_and_wants_its_token(cpu_project):
    port, token = free_port(), "template-test-token"
    server = subprocess.Popen(
        ["make", "--no-print-directory", "notebook", f"PORT={port}", "TORCH_INDEX_URL="],
        cwd=cpu_project,
        env={**os.environ, "JUPYTER_TOKEN": token, "BROWSER": "true"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api/kernelspecs"
    try:

        def alive() -> None:
            assert server.poll() is None, server.stdout.read().decode()[-3000:]

        wait_for_jupyter_to_refuse(url, alive)
        with urllib.request.urlopen(f"{url}?token={token}", timeout=10) as response:
            assert "python3" in json.loads(response.read())["kernelspecs"]
        outside = next((a for a in host_addresses() if not a.startswith("127.")), None)
        if outside:
            with pytest.raises(OSError):
                socket.create_connection((outside, port), timeout=3).close()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def host_addresses() -> list[str]:
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout
    return out.split()


@pytest.fixture(scope="module")
def hooked(tmp_path_factory):
    """A fresh bake, git init, `make pre-commit` (which syncs the environment first)."""
    project = bake_ok(tmp_path_factory.mktemp("hooked"), cuda_version="cpu", gpu_check="skip")
    subprocess.run(["git", "init", "--quiet"], cwd=project, check=True)
    result = run_make(project, "pre-commit")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return project


def pre_commit(project, *args: str) -> subprocess.CompletedProcess:
    command = [str(project / ".venv" / "bin" / "pre-commit"), "run", "--color=never", *args]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=600)


HOOKS = ("ruff-check", "ruff-format", "check-lock", "hadolint", "nbstripout", "trailing-whitespace")
HOOKS += ("end-of-file-fixer", "check-yaml", "check-merge-conflict", "check-added-large-files")


def test_every_hook_passes_on_a_fresh_bake(hooked):
    config = (hooked / ".pre-commit-config.yaml").read_text()
    assert sorted(re.findall(r"^ +- id: (\S+)$", config, re.M)) == sorted(HOOKS)
    assert "repo: local" in config and "rev:" not in config  # nothing to fetch
    subprocess.run(["git", "add", "--all"], cwd=hooked, check=True)
    result = pre_commit(hooked, "--all-files")
    assert result.returncode == 0, result.stdout[-4000:]
    assert result.stdout.count("Passed") == len(HOOKS), result.stdout


def test_each_hook_catches_what_it_is_for(hooked):
    """One mistake per hook, in files already added; each named hook fails; then all is restored."""
    edits = {
        "src/digit_classifier/config.py": lambda text: "import json\n" + text,  # an unused import (F401)
        "Dockerfile": lambda text: text + "RUN cd /tmp && touch x\n",  # hadolint DL3003: cd
        "requirements/prod.in": lambda text: text + "rich\n",  # an input changed without make lock
        "README.md": lambda text: text.replace("\n", "  \n", 1),  # trailing whitespace
        "configs/serve.yaml": lambda text: text + "port: [\n",  # YAML that does not parse
    }
    for name, edit in edits.items():
        path = hooked / name
        path.write_text(edit(path.read_text()))
    try:
        result = pre_commit(hooked, "--files", *edits)
        failed = set(re.findall(r"^(.+?)\.{3,}Failed$", result.stdout, re.M))
        assert result.returncode == 1
        names = {"lint (ruff check --fix)", "lint the Dockerfile (hadolint)", "trim trailing whitespace"}
        names |= {"locks match their .in files and the environment (make check-lock)", "YAML parses"}
        assert names <= failed, result.stdout
        assert "DL3003" in result.stdout and "requirements/prod.in changed" in result.stdout
    finally:
        subprocess.run(["git", "checkout", "--", *edits], cwd=hooked, check=True)


def test_notebook_outputs_are_stripped_at_commit(hooked):
    project = hooked
    git = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]
    path = project / "notebooks" / "example.ipynb"
    original = path.read_text()
    notebook = json.loads(original)
    code = next(cell for cell in notebook["cells"] if cell["cell_type"] == "code")
    code["execution_count"] = 1
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["task digits\n"]}]
    path.write_text(json.dumps(notebook, indent=1) + "\n")

    subprocess.run(["git", "add", "--all"], cwd=project, check=True)
    first = subprocess.run(
        [*git, "commit", "--quiet", "-m", "start"], cwd=project, capture_output=True, text=True
    )
    assert first.returncode != 0 and "files were modified by this hook" in first.stdout + first.stderr
    subprocess.run(["git", "add", "--all"], cwd=project, check=True)
    second = subprocess.run(
        [*git, "commit", "--quiet", "-m", "start"], cwd=project, capture_output=True, text=True
    )
    assert second.returncode == 0, second.stdout + second.stderr
    committed = json.loads(
        subprocess.run(
            ["git", "show", "HEAD:notebooks/example.ipynb"], cwd=project, capture_output=True, text=True
        ).stdout
    )
    for cell in committed["cells"]:
        assert not cell.get("outputs") and cell.get("execution_count") is None, cell["id"]
    # exactly the notebook as generated: the template ships it stripped, so a first commit keeps it
    assert committed == json.loads(path.read_text()) == json.loads(original)
