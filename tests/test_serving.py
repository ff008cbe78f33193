"""The generated server from outside, as a client would see it: started with `make serve`, then
fuzzed by schemathesis against its own OpenAPI schema (slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import free_port, run_make

pytestmark = pytest.mark.slow
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.fixture(scope="module")
def served(cpu_project):
    if not (cpu_project / "models" / "model.pt").is_file():
        assert run_make(cpu_project, "train", "ARGS=optim.epochs=3 --no-progress").returncode == 0
    port = free_port()
    server = subprocess.Popen(
        ["make", "--no-print-directory", "TORCH_INDEX_URL=", "serve", f"PORT={port}"],
        cwd=cpu_project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=5) as response:
                assert json.loads(response.read())["status"] == "ready"
                break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()[-2000:]
            time.sleep(0.3)
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.communicate(timeout=60)


def test_make_serve_binds_loopback_by_default(cpu_project, served):
    assert served.startswith("http://127.0.0.1:")
    dry = subprocess.run(
        ["make", "-n", "serve", "HOST=0.0.0.0", "PORT=9001"],
        cwd=cpu_project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "serve --host 0.0.0.0 --port 9001" in dry


def test_schemathesis_finds_no_server_error_and_no_schema_violation(served, tmp_path):
    checks = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{served}/openapi.json",
            "--checks",
            checks,
            "--max-examples",
            "40",
            "--generation-deterministic",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "passed" in result.stdout and "/predict" in result.stdout
