"""The inference server, for real: a uvicorn process on a loopback port, driven over HTTP."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from {{ cookiecutter.package_name }}.predict import Predictor

from .conftest import PROJECT_ROOT, write_digit_png

pytestmark = pytest.mark.slow  # starts real servers: run with `make test`, skipped by `-m "not slow"`

LIMITS = ["max_request_samples=16", "max_body_bytes=20000"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
            *overrides,
        ]
        self.process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 90
        while True:
            try:
                if call(self.url, "/ready")[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not become ready: {self.process.stderr.read()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> tuple[bool, str]:
        """SIGTERM, then (whether the server shut down cleanly, its log). uvicorn re-raises the
        signal once it has finished, so a clean exit reads as -SIGTERM."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, log = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, log = self.process.communicate()
        clean = self.process.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in log
        return clean, log


@pytest.fixture(scope="module")
def server(trained):
    running = Server(trained.model_path, *LIMITS)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def predictor(trained):
    return Predictor(trained.model_path, "cpu")


def test_health_ready_docs_and_metrics(server):
    assert call(server.url, "/health")[:2] == (200, {"status": "ok"})
    status, body, _ = call(server.url, "/ready")
    assert status == 200 and body["status"] == "ready" and body["device"] == "cpu"
    status, schema, _ = call(server.url, "/openapi.json")
    assert (
        status == 200
        and {"/predict", "/predict/image", "/health", "/ready", "/metrics"} <= schema["paths"].keys()
    )
    assert call(server.url, "/docs")[0] == 200
    call(server.url, "/predict", {"inputs": [[[0.0] * 8] * 8]})
    status, text, headers = call(server.url, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'http_requests_total{path="/predict",status="200"}' in text
    assert "http_request_duration_seconds_bucket" in text and "predict_batch_size_bucket" in text


def test_predictions_equal_infer(server, predictor, splits):
    samples = splits.test.images[:10]
    status, body, _ = call(server.url, "/predict", {"inputs": samples.tolist()})
    assert status == 200
    expected = predictor.predict(samples)
    assert body["predictions"] == [p.label for p in expected]
    assert np.allclose(body["probabilities"], [p.probabilities for p in expected], atol=1e-6)


def test_image_upload_uses_the_infer_preprocessing(server, predictor, splits, tmp_path):
    from {{ cookiecutter.package_name }}.predict import load_inputs

    png = write_digit_png(splits.test.images[3], tmp_path / "digit.png", scale=11, dark_on_light=False)
    boundary = "----digit"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="digit.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, answer, _ = call(server.url, "/predict/image", body, f"multipart/form-data; boundary={boundary}")
    assert status == 200, answer
    ((_, sample),) = load_inputs(png)
    assert answer["predictions"] == [predictor.predict(sample[np.newaxis])[0].label]


SAMPLE = [[1.0] * 8] * 8
MISTAKES = {
    "malformed-json": (b'{"inputs": [', "application/json", 400, "malformed JSON"),
    "nan-literal": (b'{"inputs": [[[NaN, 1, 1, 1, 1, 1, 1, 1]]]}', "application/json", 400, "NaN"),
    "infinite-number": (
        b'{"inputs": [[' + b",".join([b"[1e999,1,1,1,1,1,1,1]"] * 8) + b"]]}",
        "application/json",
        422,
        "NaN or infinite",
    ),
    "not-an-object": (b"[1, 2]", "application/json", 422, "JSON object"),
    "no-inputs-key": ({"data": [SAMPLE]}, "application/json", 422, "JSON object"),
    "empty-batch": ({"inputs": []}, "application/json", 422, "inputs is empty"),
    "wrong-shape": ({"inputs": [[[1.0] * 7] * 8]}, "application/json", 422, "8x8"),
    "ragged": ({"inputs": [[[1.0] * 8] * 7 + [[1.0] * 3]]}, "application/json", 422, "8x8"),
    "not-numbers": ({"inputs": [[["x"] * 8] * 8]}, "application/json", 422, "numbers"),
    "booleans": ({"inputs": [[[True] * 8] * 8]}, "application/json", 422, "numbers"),
    "out-of-range": ({"inputs": [[[17.0] * 8] * 8]}, "application/json", 422, "[0, 16]"),
    "negative": ({"inputs": [[[-1.0] * 8] * 8]}, "application/json", 422, "[0, 16]"),
    "batch-over-limit": ({"inputs": [SAMPLE] * 17}, "application/json", 413, "over the limit of 16"),
    "body-over-limit": (b'{"inputs": [' + b" " * 30000 + b"]}", "application/json", 413, "over the limit"),
    "wrong-content-type": ({"inputs": [SAMPLE]}, "text/plain", 415, "not application/json"),
}


@pytest.mark.parametrize(("body", "content_type", "status", "text"), MISTAKES.values(), ids=MISTAKES.keys())
def test_client_mistakes_get_a_one_line_4xx(server, body, content_type, status, text):
    got, answer, headers = call(server.url, "/predict", body, content_type)
    assert got == status, answer
    assert text in answer["detail"] and "\n" not in answer["detail"]
    assert answer["request_id"] == headers["x-request-id"]


@pytest.mark.parametrize(
    ("body", "content_type", "text"),
    [
        (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
            b"not a png\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
            "not a readable PNG/JPEG",
        ),
        (
            b'--b\r\nContent-Disposition: form-data; name="other"\r\n\r\nx\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
            "file",
        ),
        ({"inputs": [SAMPLE]}, "application/json", "file"),
    ],
    ids=["not-an-image", "no-file-field", "json-instead-of-upload"],
)
def test_bad_uploads_get_a_one_line_422(server, body, content_type, text):
    status, answer, _ = call(server.url, "/predict/image", body, content_type)
    assert status == 422 and text in answer["detail"]


def test_request_ids_are_echoed_and_logged(trained):
    running = Server(trained.model_path)
    status, _, headers = call(
        running.url, "/predict", {"inputs": [SAMPLE]}, headers={"x-request-id": "abc123"}
    )
    assert status == 200 and headers["x-request-id"] == "abc123"
    clean, log = running.stop()
    assert clean
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(line.get("request_id") == "abc123" and line["status"] == 200 for line in lines)


def test_concurrent_load_is_batched_and_correctly_ordered(server, predictor, splits):
    images = splits.test.images
    requests = [images[(i * 7) % 300 : (i * 7) % 300 + 1 + i % 4] for i in range(320)]
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


def test_several_worker_processes(trained, splits, predictor):
    running = Server(trained.model_path, "workers=2")
    try:
        samples = splits.test.images[:4]
        for _ in range(6):  # connections land on either process; each answers the same
            status, body, _ = call(running.url, "/predict", {"inputs": samples.tolist()})
            assert status == 200 and body["predictions"] == [p.label for p in predictor.predict(samples)]
    finally:
        assert running.stop()[0]


def test_graceful_shutdown_finishes_in_flight_requests(trained):
    running = Server(trained.model_path, "max_wait_ms=1500")  # a request waits 1.5 s for company
    answer = {}
    thread = threading.Thread(
        target=lambda: answer.update(result=call(running.url, "/predict", {"inputs": [SAMPLE]}))
    )
    thread.start()
    time.sleep(0.5)
    clean, _ = running.stop()  # SIGTERM while the request is queued
    thread.join(timeout=30)
    assert answer["result"][0] == 200
    assert clean


def test_model_failure_is_a_500_with_the_request_id_in_the_log(trained, monkeypatch, caplog):
    """The forward pass fails as a GPU running out of memory would (a GPU this machine lacks)."""
    import uvicorn

    from {{ cookiecutter.package_name }}.config import ServeConfig
    from {{ cookiecutter.package_name }}.model import DigitCNN
    from {{ cookiecutter.package_name }}.serve import create_app

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
        monkeypatch.setattr(DigitCNN, "forward", out_of_memory)
        with caplog.at_level("ERROR"):
            status, body, headers = call(f"http://127.0.0.1:{port}", "/predict", {"inputs": [SAMPLE]})
        assert status == 500 and body["detail"] == "internal error"
        assert body["request_id"] == headers["x-request-id"]
        assert body["request_id"] in caplog.text and "out of memory" in caplog.text
        assert call(f"http://127.0.0.1:{port}", "/health")[0] == 200, "the server survives the failure"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_serve_without_a_model_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "serve", f"model_path={tmp_path}/none.pt"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "no model at" in result.stderr and "make train" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "serve", "max_batch_size=0"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "max_batch_size must be at least 1" in result.stderr
