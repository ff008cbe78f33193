"""The example notebook and its tooling, for real (slow): executed headless with nbclient and a real
kernel after a short training run, Jupyter started by `make notebook` (loopback, token), and outputs
stripped at commit by the pre-commit hook."""

from __future__ import annotations

import json
import os
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


def test_notebook_outputs_are_stripped_at_commit(tmp_path):
    project = bake_ok(tmp_path, cuda_version="cpu", gpu_check="skip")
    git = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "--quiet"], cwd=project, check=True)
    result = run_make(project, "pre-commit")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
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
