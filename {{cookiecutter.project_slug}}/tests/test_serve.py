"""The inference server, for real: a uvicorn process on a loopback port, driven over HTTP."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from {{ cookiecutter.package_name }}.predict import Predictor, read_inputs

from .conftest import PROJECT_ROOT, TASKS, free_port, out_of_range, valid_sample, write_native_file
from .test_checkpoints import HOSTILE, hostile, unfit_preprocessing

pytestmark = pytest.mark.slow  # starts real servers: run with `make test`, skipped by `-m "not slow"`

LIMITS = ["max_request_samples=16", "max_body_bytes=20000"]


def call(url, path, body=None, content_type="application/json", headers=None):
    """(status, decoded JSON or text, headers) of one request; 4xx/5xx are answers, not exceptions."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(
        url + path, data=data, headers={"content-type": content_type, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw, got = response.status, response.read(), response.headers
    except urllib.error.HTTPError as err:
        status, raw, got = err.code, err.read(), err.headers
    text = raw.decode()
    return (
        status,
        (json.loads(text) if got.get("content-type", "").startswith("application/json") else text),
        got,
    )


class Server:
    """`serve` in a process of its own, one worker unless the overrides say otherwise. Its stdout and
    stderr are pipes nobody reads until `stop`: logging must never wait for them."""

    def __init__(self, model_path, *overrides):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
        command = [
            sys.executable,
            "-m",
            "{{ cookiecutter.package_name }}",
            "serve",
            "--port",
            str(self.port),
            f"model_path={model_path}",
            "device=cpu",
            *([] if any(item.startswith("workers=") for item in overrides) else ["workers=1"]),
            *overrides,
        ]
        self.process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                if call(self.url, "/ready")[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready: {self.stop()[1][-2000:]}")
            time.sleep(0.2)

    def stop(self) -> tuple[bool, str]:
        """SIGTERM, then (whether the server shut down cleanly: exit status 0 after the application's
        shutdown, its stderr)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, log = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, log = self.process.communicate()
        clean = self.process.returncode == 0 and "Application shutdown complete" in log
        return clean, log


@pytest.fixture(scope="module")
def server(trained):
    running = Server(trained.model_path, *LIMITS)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def predictor(trained):
    return Predictor(trained.model_path, "cpu")


def test_health_ready_docs_and_metrics(server, task_name, task):
    assert call(server.url, "/health")[:2] == (200, {"status": "ok"})
    status, body, _ = call(server.url, "/ready")
    assert (
        status == 200 and body["status"] == "ready" and body["device"] == "cpu" and body["task"] == task_name
    )
    status, schema, _ = call(server.url, "/openapi.json")
    assert (
        status == 200
        and {"/predict", "/predict/file", "/health", "/ready", "/metrics"} <= schema["paths"].keys()
    )
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["inputs"]["items"] == task.input_spec.json_schema()  # documented from the spec
    assert all(name in schema["info"]["description"] for name in task.class_names)
    assert call(server.url, "/docs")[0] == 200
    call(server.url, "/predict", {"inputs": [valid_sample(task.input_spec).tolist()]})
    status, text, headers = call(server.url, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'http_requests_total{path="/predict",status="200"}' in text
    assert "http_request_duration_seconds_bucket" in text and "predict_batch_size_bucket" in text


def test_predictions_equal_infer(server, predictor, splits):
    samples = splits.test.inputs[:10]
    status, body, _ = call(server.url, "/predict", {"inputs": samples.tolist()})
    assert status == 200
    expected = predictor.predict(samples)
    assert body["predictions"] == [p.label for p in expected] and body["labels"] == [p.name for p in expected]
    assert np.allclose(body["probabilities"], [p.probabilities for p in expected], atol=1e-6)


def multipart(path, field="file") -> tuple[bytes, str]:
    boundary = "----sample"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{path.name}"\r\n\r\n'
    return (
        head.encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def test_file_upload_is_read_as_infer_reads_it(server, predictor, task_name, task, splits, tmp_path):
    native = write_native_file(
        task_name, splits.test.inputs[3:4] if ".png" in task.file_types else splits.test.inputs[:3], tmp_path
    )
    np.save(tmp_path / "batch.npy", splits.test.inputs[:2])
    for path in (native, tmp_path / "batch.npy"):
        status, answer, _ = call(server.url, "/predict/file", *multipart(path))
        assert status == 200, answer
        samples = np.stack([sample for _, sample in read_inputs(path, task)])
        assert answer["predictions"] == [p.label for p in predictor.predict(samples)]


def client_mistakes(spec) -> dict:
    """(body, content type, status, fragment of the reason) for each mistake, from the input spec."""
    sample = valid_sample(spec).tolist()
    wrong = np.zeros((*spec.shape[:-1], spec.shape[-1] - 1)).tolist()
    infinite = re.sub(r"\d+(\.\d+)?", "1e999", json.dumps({"inputs": [sample]}), count=1)
    huge = re.sub(r"\d+(\.\d+)?", "9" * 401, json.dumps({"inputs": [sample]}), count=1)
    cases = {
        "malformed-json": (b'{"inputs": [', "application/json", 400, "malformed JSON"),
        "nan-literal": (b'{"inputs": [NaN]}', "application/json", 400, "malformed JSON"),
        "infinite-number": (infinite.encode(), "application/json", 422, "out of range"),
        "huge-integer": (huge.encode(), "application/json", 422, "out of range"),
        "deep-nesting": (b'{"inputs": ' + b"[" * 15000, "application/json", 422, spec.sample_text()),
        "deep-nesting-elsewhere": (b'{"x": ' + b"[" * 15000, "application/json", 422, "JSON object"),
        "other-keys": ({"inputs": [sample], "x": 1}, "application/json", 422, "JSON object"),
        "not-an-object": (b"[1, 2]", "application/json", 422, "JSON object"),
        "no-inputs-key": ({"data": [sample]}, "application/json", 422, "JSON object"),
        "empty-batch": ({"inputs": []}, "application/json", 422, "inputs is empty"),
        "wrong-shape": ({"inputs": [wrong]}, "application/json", 422, spec.sample_text()),
        "ragged": ({"inputs": [sample, wrong]}, "application/json", 422, spec.sample_text()),
        "not-numbers": ({"inputs": [np.full(spec.shape, "x").tolist()]}, "application/json", 422, "numbers"),
        "booleans": ({"inputs": [np.full(spec.shape, True).tolist()]}, "application/json", 422, "numbers"),
        "strings": ({"inputs": [np.full(spec.shape, "1").tolist()]}, "application/json", 422, "`str`"),
        "null": ({"inputs": [np.full(spec.shape, None).tolist()]}, "application/json", 422, "`null`"),
        "batch-over-limit": ({"inputs": [sample] * 17}, "application/json", 413, "over the limit of 16"),
        "body-over-limit": (
            b'{"inputs": [' + b" " * 30000 + b"]}",
            "application/json",
            413,
            "over the limit",
        ),
        "wrong-content-type": ({"inputs": [sample]}, "text/plain", 415, "not application/json"),
    }
    for name, array in out_of_range(spec).items():
        cases[name] = ({"inputs": [array.tolist()]}, "application/json", 422, spec.range_text())
    return cases


def test_client_mistakes_get_a_one_line_4xx(server, task):
    for name, (body, content_type, status, text) in client_mistakes(task.input_spec).items():
        got, answer, headers = call(server.url, "/predict", body, content_type)
        assert got == status, (name, answer)
        assert text in answer["detail"] and "\n" not in answer["detail"], (name, answer)
        assert answer["request_id"] == headers["x-request-id"]


def test_bad_uploads_get_a_one_line_422(server, task, tmp_path):
    (tmp_path / "x.npy").write_bytes(b"\x93NUMPY broken")
    (tmp_path / "notes.txt").write_bytes(b"\x00\x01 not a sample")
    (tmp_path / "red\x1b[31m.txt").write_bytes(b"\x00\x01 not a sample")  # a terminal escape in its name
    cases = {"x.npy": "not a readable .npy", "notes.txt": "notes.txt", "red\x1b[31m.txt": "red\\x1b[31m.txt"}
    for name, text in cases.items():
        path = tmp_path / name
        status, answer, _ = call(server.url, "/predict/file", *multipart(path))
        assert status == 422 and text in answer["detail"], answer
        assert "\n" not in answer["detail"] and "\x1b" not in answer["detail"], answer
    status, answer, _ = call(server.url, "/predict/file", *multipart(tmp_path / "x.npy", field="other"))
    assert status == 422 and "file" in answer["detail"]
    status, answer, _ = call(server.url, "/predict/file", {"inputs": []}, "application/json")
    assert status == 422 and "file" in answer["detail"]


def test_request_ids_are_echoed_and_logged(trained, task):
    running = Server(trained.model_path)
    sample = valid_sample(task.input_spec).tolist()
    status, _, headers = call(
        running.url, "/predict", {"inputs": [sample]}, headers={"x-request-id": "abc123"}
    )
    assert status == 200 and headers["x-request-id"] == "abc123"
    clean, log = running.stop()
    assert clean
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(line.get("request_id") == "abc123" and line["status"] == 200 for line in lines)


def test_concurrent_load_is_batched_and_correctly_ordered(server, predictor, splits):
    inputs, room = splits.test.inputs, len(splits.test.inputs) - 4
    requests = [inputs[(i * 7) % room : (i * 7) % room + 1 + i % 4] for i in range(320)]
    expected = [[p.label for p in predictor.predict(batch)] for batch in requests]

    def send(batch):
        return call(server.url, "/predict", {"inputs": batch.tolist()})

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(send, requests))
    assert [status for status, _, _ in answers] == [200] * len(requests)
    assert [body["predictions"] for _, body, _ in answers] == expected
    metrics = call(server.url, "/metrics")[1]
    count = float(
        next(line.split()[1] for line in metrics.splitlines() if line.startswith("predict_batch_size_count"))
    )
    total = float(
        next(line.split()[1] for line in metrics.splitlines() if line.startswith("predict_batch_size_sum"))
    )
    assert total / count > 1, "concurrent requests were never grouped into one forward pass"


def test_graceful_shutdown_finishes_in_flight_requests(trained, task):
    running = Server(trained.model_path, "max_wait_ms=1500")  # a request waits 1.5 s for company
    answer, body = {}, {"inputs": [valid_sample(task.input_spec).tolist()]}
    thread = threading.Thread(target=lambda: answer.update(result=call(running.url, "/predict", body)))
    thread.start()
    time.sleep(0.5)
    clean, _ = running.stop()  # SIGTERM while the request is queued
    thread.join(timeout=30)
    assert answer["result"][0] == 200
    assert clean


def test_model_failure_is_a_500_with_the_request_id_in_the_log(trained, task, monkeypatch, caplog):
    """The forward pass fails as a GPU running out of memory would (a GPU this machine lacks)."""
    import uvicorn

    from {{ cookiecutter.package_name }}.checkpoint import load_model
    from {{ cookiecutter.package_name }}.config import ServeConfig
    from {{ cookiecutter.package_name }}.serving.app import create_app

    def out_of_memory(self, inputs):
        raise RuntimeError("CUDA error: out of memory")

    port = free_port()
    app = create_app(ServeConfig(model_path=str(trained.model_path), device="cpu"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        monkeypatch.setattr(type(load_model(trained.model_path).model), "forward", out_of_memory)
        with caplog.at_level("ERROR"):
            status, body, headers = call(
                f"http://127.0.0.1:{port}", "/predict", {"inputs": [valid_sample(task.input_spec).tolist()]}
            )
        assert status == 500 and body["detail"] == "internal error"
        assert body["request_id"] == headers["x-request-id"]
        assert body["request_id"] in caplog.text and "out of memory" in caplog.text
        assert call(f"http://127.0.0.1:{port}", "/health")[0] == 200, "the server survives the failure"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def serve_command(*args: str) -> subprocess.CompletedProcess:
    """`serve` that must stop before it listens: a usage or model problem."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    command = [sys.executable, "-m", "{{ cookiecutter.package_name }}", "serve", *args]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_serve_without_a_model_is_one_line(tmp_path):
    result = serve_command(f"model_path={tmp_path}/none.pt")
    assert result.returncode == 1 and "no model at" in result.stderr and "make train" in result.stderr
    result = serve_command("max_batch_size=0")
    assert result.returncode == 2 and "max_batch_size must be at least 1" in result.stderr


def test_serve_refuses_a_model_of_another_task(trained, task_name):
    other = next(name for name in TASKS if name != task_name)
    result = serve_command(f"model_path={trained.model_path}", f"task={other}")
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert f"is a '{task_name}' model but the configured task is '{other}'" in result.stderr


@pytest.mark.parametrize(
    "name", ["huge-config", "state-is-a-list", "no-preprocessing", "unfit-preprocessing"]
)
def test_serve_refuses_a_hostile_model_before_it_listens(trained, tmp_path, name):
    """Checked before the server starts: not a traceback from uvicorn's worker and exit 3."""
    if name == "unfit-preprocessing":  # loads, and fails only when run (in the server's warm-up)
        path, fragment = unfit_preprocessing(trained.model_path, tmp_path), "its model fails on a sample"
        if path is None:
            pytest.skip("the task keeps no tensors in its preprocessing")
    else:
        path, fragment = hostile(trained.model_path, tmp_path, name), HOSTILE[name][1]
    result = serve_command("--port", str(free_port()), f"model_path={path}", "device=cpu")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0 and fragment in result.stderr, result.stderr
