"""The server as processes: workers over the whole machine, metrics across workers, logging that never
waits for stderr, and a clean exit (status 0) on SIGTERM."""

import http.client
import json
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from {{ cookiecutter.package_name }}.config import ServeConfig
from {{ cookiecutter.package_name }}.serving import logs, metrics, server

from .conftest import valid_sample, wait_for
from .test_serve import Server, call, predictor  # noqa: F401 (predictor: a fixture)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`, in a /metrics text."""
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        sample_name, _, label_text = sample.partition("{")
        if sample_name == name and labels.items() <= dict(re.findall(r'(\w+)="([^"]*)"', label_text)).items():
            total += float(value)
    return total


# --- the whole machine ---------------------------------------------------------------------------


def test_workers_auto_is_one_per_core_on_cpu_and_the_cores_are_shared_out(monkeypatch):
    cores = server.cpu_count()
    assert server.worker_count(ServeConfig(workers="auto", device="cpu")) == cores
    assert server.worker_count(ServeConfig(workers="3", device="cpu")) == 3
    assert server.threads_per_worker(1) == cores and server.threads_per_worker(cores) == 1
    monkeypatch.setattr(server, "cpu_count", lambda: 16)
    assert server.worker_count(ServeConfig(workers="auto", device="cpu")) == 16
    assert [server.threads_per_worker(n) for n in (1, 2, 3, 16, 40)] == [16, 8, 5, 1, 1]


def test_the_cgroup_cpu_quota_caps_the_cores(tmp_path, monkeypatch):
    """A container's --cpus, as cgroup v2 and v1 write it; no quota leaves the affinity's count."""
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert server.cgroup_cpu_quota(v2) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert server.cgroup_cpu_quota(v2) is None
    (tmp_path / "v1" / "cpu").mkdir(parents=True)
    (tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "v1" / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert server.cgroup_cpu_quota(tmp_path / "v1") == 3.0
    (tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert server.cgroup_cpu_quota(tmp_path / "v1") is None
    assert server.cgroup_cpu_quota(tmp_path / "none") is None
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(server, "cgroup_cpu_quota", lambda: 0.5)
    assert server.cpu_count() == 1
    monkeypatch.setattr(server, "cgroup_cpu_quota", lambda: cores + 8.0)
    assert server.cpu_count() == cores


def test_gpu_slots_are_held_one_per_worker_and_freed_with_it(tmp_path, monkeypatch):
    """Workers claim slots 0, 1, 2, ... and run on GPU slot % count; a slot freed by a dead worker goes
    to its replacement. No GPU needed: the count and the device check are stubbed."""
    import torch

    from {{ cookiecutter.package_name }} import device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(device, "resolve_device", lambda spec, quiet=False: torch.device("cuda"))
    monkeypatch.setattr(server, "_held_slots", [])
    config = ServeConfig(device="cuda", workers="4")
    devices = [server.worker_device(config, tmp_path) for _ in range(3)]
    assert devices == ["cuda:0", "cuda:1", "cuda:0"]
    os.close(server._held_slots.pop(1))  # the worker holding slot 1 exits: its lock goes with it
    assert server.worker_device(config, tmp_path) == "cuda:1"
    assert server.worker_device(ServeConfig(device="cuda:1"), tmp_path) == "cuda:1"
    assert server.worker_device(ServeConfig(device="cpu"), tmp_path) == "cpu"
    for fd in server._held_slots:
        os.close(fd)


def test_a_dead_workers_live_gauges_leave_the_sums(tmp_path, monkeypatch):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    for pid in (int(dead.stdout), os.getpid()):
        for name in (f"gauge_livesum_{pid}.db", f"counter_{pid}.db"):
            (tmp_path / name).write_bytes(b"")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    metrics.forget_dead_workers()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [f"counter_{dead.stdout.strip()}.db", f"counter_{os.getpid()}.db", f"gauge_livesum_{os.getpid()}.db"]
    )


# --- logging that never waits --------------------------------------------------------------------


def drain(fd: int, into: bytearray) -> None:
    """Reads a pipe until its writers close it."""
    while chunk := os.read(fd, 65536):
        into.extend(chunk)


def test_a_stalled_sink_drops_and_counts_records_and_says_so_once_it_recovers():
    read_end, write_end = os.pipe()  # nobody reads it until the end: 64 KiB, then writes block
    handler = logs.DroppingQueueHandler(queue.SimpleQueue(), 100)
    counted = []
    handler.on_drop = counted.append
    writer = logs.Writer(write_end, handler, logs.Limiter())
    writer.thread.start()
    logger = logging.getLogger("test.stalled")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        done = threading.Event()

        def flood():
            for _ in range(2000):
                logger.warning("x" * 200)
            done.set()

        threading.Thread(target=flood).start()
        assert done.wait(timeout=20), "logging waited for the stalled sink"
        assert handler.dropped > 0 and sum(counted) == handler.dropped
        output = bytearray()
        reader = threading.Thread(target=drain, args=(read_end, output))
        reader.start()
        wait_for(lambda: handler.queue.empty(), "the writer caught up with the sink", 10)
        logger.warning("after")
        writer.stop(wait_s=10)
        os.close(write_end)
        reader.join(timeout=10)
    finally:
        logger.removeHandler(handler)
        os.close(read_end)
    lines = output.decode().splitlines()
    drops = [json.loads(line)["count"] for line in lines if "log_records_dropped" in line]
    assert sum(drops) == handler.dropped and lines[-1] == "WARNING:  after"
    assert len(lines) == 2000 - handler.dropped + len(drops) + 1


def test_connection_errors_are_logged_once_per_interval_with_a_count():
    handler = logs.DroppingQueueHandler(queue.SimpleQueue(), 1000)
    limiter = logs.Limiter(interval_s=60)
    handler.addFilter(logs.ConnectionErrorFilter(limiter))
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "asyncio")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        for _ in range(30):
            loggers[0].warning("Invalid HTTP request received.")
            error = OSError(24, "Too many open files")
            logs.loop_exception_handler(
                None, {"message": "socket.accept() out of system resource", "exception": error}
            )
        loggers[0].info("Started server process [%d]", 1)  # not an error: never limited
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
    records = [handler.queue.get_nowait() for _ in range(handler.queue.qsize())]
    assert [record.getMessage().splitlines()[0] for record in records] == [
        "Invalid HTTP request received.",
        "socket.accept() out of system resource",
        "Started server process [1]",
    ]
    assert sorted(count for _, count in limiter.expired(everything=True)) == [29, 29]


# --- real servers --------------------------------------------------------------------------------


def keep_alive_requests(url: str, count: int, body: str) -> list[int]:
    """`count` requests on one connection, every tenth a /predict: their statuses."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    statuses = []
    for i in range(count):
        if i % 10:
            connection.request("GET", "/health")
        else:
            connection.request("POST", "/predict", body, {"content-type": "application/json"})
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)
    connection.close()
    return statuses


@pytest.mark.slow
def test_a_server_whose_stderr_nobody_reads_keeps_answering(trained, task):
    """12,000 requests: over the pipe's 64 KiB and the log queue's 10,000 records. The server keeps
    answering, counts what it could not log, and says so once its stderr is read again."""
    running = Server(trained.model_path)  # stdout and stderr: pipes nobody reads yet
    body = json.dumps({"inputs": [valid_sample(task.input_spec).tolist()]})
    output, readers = {"stdout": bytearray(), "stderr": bytearray()}, []
    try:
        statuses = keep_alive_requests(running.url, 12_000, body)
        assert statuses == [200] * 12_000
        dropped = metric(call(running.url, "/metrics")[1], "log_records_dropped_total")
        assert dropped > 0
        for name, into in output.items():  # the sink recovers
            pipe = getattr(running.process, name)
            readers.append(threading.Thread(target=drain, args=(pipe.fileno(), into)))
            readers[-1].start()
        deadline = time.monotonic() + 30
        while b"log_records_dropped" not in output["stderr"] and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(50):  # garbage: uvicorn warns "Invalid HTTP request received."
            with socket.create_connection(("127.0.0.1", running.port)) as sock:
                sock.sendall(b"GARBAGE\r\n\r\n")
                sock.recv(1024)
        assert call(running.url, "/health")[0] == 200
    finally:
        running.process.send_signal(signal.SIGTERM)
        running.process.wait(timeout=30)
        for reader in readers:
            reader.join(timeout=30)
    log = output["stderr"].decode()
    assert running.process.returncode == 0 and "Application shutdown complete" in log
    drops = [json.loads(line)["count"] for line in log.splitlines() if "log_records_dropped" in line]
    assert sum(drops) >= dropped
    assert log.count("Invalid HTTP request received.") == 2  # the first, and the count of the others
    assert "'Invalid HTTP request received.' 49 more times" in log


@pytest.mark.slow
def test_two_workers_share_requests_metrics_and_a_clean_shutdown(trained, splits, predictor):  # noqa: F811
    """Both processes answer, /metrics (from either) counts every request, and SIGTERM mid-load
    lets the requests in flight on each finish before the server exits 0."""
    running = Server(
        trained.model_path, "workers=2", "max_batch_size=8", "max_wait_ms=2500", "max_queue_ms=10000"
    )
    try:
        pids, deadline = {}, time.monotonic() + 90  # the first ready worker let Server return
        while len(pids) < 2 and time.monotonic() < deadline:
            status, body, _ = call(running.url, "/ready")
            if status == 200:
                pids[body["pid"]] = body["threads"]
        assert len(pids) == 2 and set(pids.values()) == {server.threads_per_worker(2)}
        samples = splits.test.inputs[:4]
        expected = [p.label for p in predictor.predict(samples)]

        def predict(count):  # a full batch is two requests: answered at once
            return call(running.url, "/predict", {"inputs": samples[:count].tolist()})

        with ThreadPoolExecutor(max_workers=16) as pool:  # fresh connections: either worker takes each
            answers = list(pool.map(predict, [4] * 32))
        assert all(status == 200 and body["predictions"] == expected for status, body, _ in answers)
        for _ in range(4):  # whichever worker answers, the count is both workers'
            assert metric(call(running.url, "/metrics")[1], "http_requests_total", path="/predict") == 32
        with ThreadPoolExecutor(max_workers=16) as pool:
            in_flight = [pool.submit(predict, 1) for _ in range(6)]  # under a batch: they wait
            time.sleep(1.0)  # taken by a worker: each then waits 2.5 s for company (max_wait_ms)
            clean, log = running.stop()
            statuses = [future.result()[0] for future in in_flight]
        assert statuses == [200] * 6
        assert clean and log.count("Application shutdown complete") == 2
    finally:
        if running.process.poll() is None:
            running.stop()
