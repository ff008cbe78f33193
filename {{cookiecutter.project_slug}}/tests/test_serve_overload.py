"""Admission control, for real: a burst several times the queue is shed with 503 and Retry-After
while /health stays fast, a request queued past max_queue_ms or whose client left is never run, and a
request larger than max_batch_size is split into forward passes no larger."""

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from {{ cookiecutter.package_name }}.predict import Predictor

from .conftest import TASKS, free_port, valid_sample, wait_for
from .test_serve import Server

# Admission control does not depend on the task: once, on the first.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("task_name", TASKS[:1], indirect=True, scope="session"),
]

# 3-sample requests from 32 clients at once: 12 times max_queue_samples (8). One worker serves its
# connections in turn, so /health waits behind about one request per open connection (0.7-1.5 ms
# each on a busy 2-core machine): 100 ms is passed at 64-100 clients.
CLIENTS = 32

# Polls /health (timing each answer) and /ready until its stdin closes, in its own process so that
# the burst's client threads cannot delay it; prints the latencies and the /ready statuses seen.
POLLER = """
import json, sys, threading, time, urllib.error, urllib.request
url, stop, health, ready = sys.argv[1], threading.Event(), [], set()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
print("polling", flush=True)
while not stop.is_set():
    started = time.perf_counter()
    urllib.request.urlopen(url + "/health", timeout=5).read()
    health.append((time.perf_counter() - started) * 1000)
    try:
        ready.add(urllib.request.urlopen(url + "/ready", timeout=5).status)
    except urllib.error.HTTPError as err:
        ready.add(err.code)
    time.sleep(0.01)
print(json.dumps({"health_ms": health, "ready": sorted(ready)}), flush=True)
"""


def post(port: int, samples: np.ndarray) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one /predict, the client's patience bounded at 10 s."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = json.dumps({"inputs": samples.tolist()})
        connection.request("POST", "/predict", body, {"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, dict(response.headers), json.loads(response.read())
    finally:
        connection.close()


def get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def metric(port: int, sample: str) -> float:
    """The value of one metric sample (name with its labels) on /metrics; 0 when absent."""
    lines = get(port, "/metrics")[1].splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.split(" ")[0] == sample)


def shed(port: int, reason: str) -> float:
    """Requests shed for `reason` so far."""
    return metric(port, 'predict_shed_requests_total{reason="' + reason + '"}')


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return int(fields["VmRSS"].split()[0]) / 1024


def burst(port: int, samples: np.ndarray, clients: int, each: int) -> list[tuple[int, dict, dict]]:
    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(lambda _: post(port, samples), range(clients * each)))


def test_a_burst_is_shed_with_503_and_the_server_stays_responsive(trained, splits):
    running = Server(trained.model_path, "workers=1", "max_batch_size=4", "max_queue_samples=8")
    port = running.port
    try:
        samples = splits.test.inputs[:3]
        for _ in range(20):  # buffers and caches a served request allocates, before the baseline
            assert post(port, samples)[0] == 200
        rss_before = rss_mb(running.process.pid)
        poller = subprocess.Popen(
            [sys.executable, "-c", POLLER, running.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert poller.stdout.readline().strip() == "polling"
        answers = burst(port, samples, CLIENTS, each=24)
        polled = json.loads(poller.communicate("", timeout=30)[0])
        rss_after = rss_mb(running.process.pid)
        statuses = [status for status, _, _ in answers]
        refused = [(headers, body) for status, headers, body in answers if status == 503]
        print(
            f"\nburst of {len(answers)} requests ({CLIENTS} clients): {statuses.count(200)} answered,"
            f" {len(refused)} refused; /health max {max(polled['health_ms']):.1f} ms over"
            f" {len(polled['health_ms'])} probes; RSS {rss_before:.0f} -> {rss_after:.0f} MB"
        )
        assert set(statuses) <= {200, 503} and 200 in statuses and refused, set(statuses)
        for headers, body in refused:
            assert int(headers["retry-after"]) >= 1 and "\n" not in body["detail"], (headers, body)
            assert "max_queue_samples" in body["detail"] or "max_queue_ms" in body["detail"], body
            assert body["request_id"] == headers["x-request-id"]
        assert max(polled["health_ms"]) < 100 and 503 in polled["ready"], polled["ready"]
        assert rss_after < rss_before + 50
        assert shed(port, "queue_full") + shed(port, "queue_timeout") == len(refused)
        wait_for(lambda: get(port, "/ready")[0] == 200, "/ready is 200 again")
        check_a_large_request_is_split(port, trained, splits)
    finally:
        running.stop()


def check_a_large_request_is_split(port: int, trained, splits) -> None:
    """3 x max_batch_size + 1 samples: answered in order, no forward pass over max_batch_size."""
    samples = splits.test.inputs[:13]
    passes = metric(port, "predict_batch_size_count")
    status, _, body = post(port, samples)
    assert status == 200
    assert body["predictions"] == [p.label for p in Predictor(trained.model_path, "cpu").predict(samples)]
    assert metric(port, "predict_batch_size_count") == passes + 4
    assert metric(port, 'predict_batch_size_bucket{le="4.0"}') == metric(port, "predict_batch_size_count")


@pytest.fixture(scope="module")
def gated(trained):
    """An in-process server (one forward pass at a time) whose forward passes wait while `gate` is
    clear, the size of each recorded in `passes`: requests queue behind a pass for as long as needed."""
    import uvicorn

    from {{ cookiecutter.package_name }}.checkpoint import load_model
    from {{ cookiecutter.package_name }}.config import ServeConfig
    from {{ cookiecutter.package_name }}.serving.app import create_app

    config = ServeConfig(model_path=str(trained.model_path), device="cpu", max_batch_size=4, max_queue_ms=50)
    port, gate, passes = free_port(), threading.Event(), []
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    model_class = type(load_model(trained.model_path).model)
    forward = model_class.forward

    def gated_forward(self, inputs):
        passes.append(len(inputs))
        assert gate.wait(30)
        return forward(self, inputs)

    with pytest.MonkeyPatch.context() as patch:
        try:
            wait_for(lambda: server.started or not thread.is_alive(), "the server started", 60)
            assert server.started
            patch.setattr(model_class, "forward", gated_forward)
            yield port, gate, passes
        finally:
            gate.set()
            server.should_exit = True
            thread.join(timeout=30)


def hold_the_model(gated, sample: np.ndarray, pool: ThreadPoolExecutor):
    """A request in the model, held there until the gate opens; the pool runs it."""
    port, gate, passes = gated
    gate.clear()
    passes.clear()
    held = pool.submit(post, port, sample)
    wait_for(lambda: passes == [1], "the first request is in the model")
    return held


def test_a_request_queued_past_max_queue_ms_is_dropped_unrun(gated, task):
    port, gate, passes = gated
    sample = valid_sample(task.input_spec)[None]
    timeouts = shed(port, "queue_timeout")
    with ThreadPoolExecutor(max_workers=2) as pool:
        held = hold_the_model(gated, sample, pool)
        queued = pool.submit(post, port, sample)
        wait_for(lambda: metric(port, "predict_queue_samples") == 1, "the second request is queued")
        time.sleep(0.15)  # past max_queue_ms (50) while the model is busy
        status, headers, body = post(port, sample)  # the server is behind: refused at once
        assert status == 503 and "max_queue_ms=50" in body["detail"] and int(headers["retry-after"]) >= 1
        gate.set()
        assert held.result()[0] == 200
        status, headers, body = queued.result()
    assert status == 503 and int(headers["retry-after"]) >= 1, body
    assert "without reaching the model, over max_queue_ms=50" in body["detail"] and "\n" not in body["detail"]
    assert passes == [1], "the request dropped for its wait reached the model"
    assert shed(port, "queue_timeout") == timeouts + 2


def test_a_client_that_leaves_while_queued_is_never_run(gated, task):
    port, gate, passes = gated
    sample = valid_sample(task.input_spec)[None]
    body = json.dumps({"inputs": sample.tolist()}).encode()
    head = "POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    request = f"{head}content-length: {len(body)}\r\n\r\n".encode() + body
    left = shed(port, "disconnected")
    with ThreadPoolExecutor(max_workers=1) as pool:
        held = hold_the_model(gated, sample, pool)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(request)
            wait_for(lambda: metric(port, "predict_queue_samples") == 1, "the second request is queued")
        wait_for(lambda: metric(port, "predict_queue_samples") == 0, "the request left the queue")
        assert shed(port, "disconnected") == left + 1
        gate.set()
        assert held.result()[0] == 200
    assert post(port, sample)[0] == 200  # the next request is served: the queue is consistent
    assert passes == [1, 1], "the request of the client that left reached the model"
