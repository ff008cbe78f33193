"""Hostile clients against a real server: idle and half-open connections past the open-files limit,
bodies over the limit (declared or streamed), slow bodies, and image bombs. What each must cost the
server is bounded: its sockets, its memory, its log, and the latency of everyone else."""

import contextlib
import json
import os
import re
import resource
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from {{ cookiecutter.package_name }}.serving.guard import RESERVE_FILES, connection_cap, make_room
from {{ cookiecutter.package_name }}.tasks import get_task

from .conftest import PROJECT_ROOT, TASKS, free_port
from .test_serve import call

# The connection tests do not depend on the task: they run once, on a task that reads images (the
# image-bomb test needs one) where there is such a task.
IMAGE_TASKS = [name for name in TASKS if ".png" in get_task(name).file_types]
slow = pytest.mark.slow  # starts a real server: run with `make test`, skipped by `-m "not slow"`

TIMEOUT_S = 2.0  # client_timeout_s: short, so that the deadlines are seen within the test
OPEN_FILES = 1024  # the server's open-files limit, as on many hosts
BODY_LIMIT = 1_048_576  # max_body_bytes (the default)
MB = 1 << 20


class HostileServer:
    """A server (one worker) under a lowered open-files limit, its log in a file, its temp files in
    their own folder."""

    def __init__(self, model_path, folder):
        self.port, self.log_path, self.tmp = free_port(), folder / "server.log", folder / "tmp"
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp.mkdir()
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src"), "TMPDIR": str(self.tmp)}
        overrides = ["workers=1", f"client_timeout_s={TIMEOUT_S}", f"max_body_bytes={BODY_LIMIT}"]
        command = [sys.executable, "-m", "{{ cookiecutter.package_name }}", "serve", "--port", str(self.port)]
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [*command, f"model_path={model_path}", "device=cpu", *overrides],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES)),
            )
        deadline = time.monotonic() + 90
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"server did not become ready: {self.log()[-2000:]}")
            time.sleep(0.2)

    def ready(self) -> bool:
        try:
            return call(self.url, "/ready")[0] == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss(self) -> tuple[int, int]:
        """(resident, peak resident) bytes of the serving process."""
        with open(f"/proc/{self.process.pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status.read().splitlines())
        return tuple(int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM"))

    def settled_open_files(self) -> int:
        """The server's count of open files once it stops changing (within a second)."""
        count, deadline = -1, time.monotonic() + 1
        while time.monotonic() < deadline:
            count, previous = len(os.listdir(f"/proc/{self.process.pid}/fd")), count
            if count == previous:
                break
            time.sleep(0.05)
        return count

    def temp_bytes(self) -> int:
        """Bytes in the files the server holds open in its temp folder (unlinked ones included)."""
        total, fds = 0, f"/proc/{self.process.pid}/fd"
        for fd in os.listdir(fds):
            try:
                if os.readlink(f"{fds}/{fd}").startswith(str(self.tmp)):
                    total += os.stat(f"{fds}/{fd}").st_size
            except OSError:  # closed meanwhile
                pass
        return total

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session", params=(IMAGE_TASKS or TASKS)[:1])
def task_name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    if not sys.platform.startswith("linux"):
        pytest.skip("measures the server through /proc and rlimits (Linux)")
    running = HostileServer(trained.model_path, tmp_path_factory.mktemp("hostile"))
    yield running
    running.stop()


# --- the connection cap, without a server ----------------------------------------------------------


def test_connection_cap_stays_under_the_open_files_limit():
    assert connection_cap(0, 1024) == 1024 - RESERVE_FILES  # automatic
    assert connection_cap(100, 1024) == 100
    assert connection_cap(5000, 1024) == 1024 - RESERVE_FILES  # past the limit accept() would fail
    assert connection_cap(0, 200) == 100  # a tiny limit: half of it, not a handful


class FakeConnection:
    def __init__(self):
        self.transport = self
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def abort(self) -> None:
        self.closed = True


def test_at_the_cap_the_longest_idle_connection_makes_room():
    busy, old, new = FakeConnection(), FakeConnection(), FakeConnection()
    connections, idle = {busy, old, new}, {old: None, new: None}  # idle: the longest idle first
    assert make_room(connections, idle, 4) and not old.closed  # under the cap: nobody is closed
    assert make_room(connections, idle, 3) and old.closed and connections == {busy, new}
    assert make_room(connections, idle, 2) and new.closed and connections == {busy}
    assert not make_room(connections, idle, 1) and not busy.closed  # none idle: the newcomer is refused


# --- against a real server -------------------------------------------------------------------------


@pytest.fixture
def many_files():
    """This test process's own open-files limit, raised for 1,100 client sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if wanted < 1400:
        pytest.skip(f"the open-files hard limit ({hard}) is too low for 1,100 client sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def connect(server, timeout=5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one response read off a raw socket, up to its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed_by_server(sock) -> bool:
    """Whether the server has closed the connection (after any response it sent)."""
    try:
        while chunk := sock.recv(65536):
            del chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def readable(sock, timeout_s: float) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))


def health_ms(server) -> float:
    """One /health request on a new connection, in milliseconds, connect to last byte."""
    started = time.perf_counter()
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        status, _, body = read_response(sock)
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    return (time.perf_counter() - started) * 1000


def probe_health(server, stop: threading.Event, every_s=0.02) -> list[float]:
    latencies = []
    while not stop.is_set():
        latencies.append(health_ms(server))
        time.sleep(every_s)
    return latencies


def assert_one_line_error(status, headers, body, expected) -> dict:
    assert status in expected, (status, body)
    payload = json.loads(body)
    assert payload.keys() == {"detail", "request_id"} and "\n" not in payload["detail"], payload
    assert payload["request_id"] == headers.get("x-request-id"), (payload, headers)
    return payload


@slow
def test_idle_and_half_open_connections_do_not_lock_others_out(server, many_files):
    """Slowloris: more idle connections than the server has file descriptors."""
    started, lines_before = time.monotonic(), len(server.log().splitlines())
    idle = []
    for i in range(1100):  # half send part of a request line, half nothing at all
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        if i % 2:
            sock.sendall(b"GET /hea")
        idle.append(sock)
    opened_s = time.monotonic() - started
    files = server.settled_open_files()  # the burst accepted (a probe behind it in the backlog waits)
    latencies = [health_ms(server) for _ in range(5)]  # while the idle ones are all still open
    print(f"\n1,100 idle connections opened in {opened_s:.2f} s, the server holding {files} files")
    print(f"/health meanwhile: {', '.join(f'{ms:.1f}' for ms in latencies)} ms")
    assert max(latencies) < 100 and time.monotonic() - started < TIMEOUT_S
    deadline, pending = started + TIMEOUT_S + 5, {sock.fileno(): sock for sock in idle}
    poller = select.poll()  # not select(): the sockets' descriptors run past 1024
    for fd in pending:
        poller.register(fd, select.POLLIN)
    while pending and time.monotonic() < deadline:  # the server closes every one of them
        for fd, _ in poller.poll(200):
            if closed_by_server(pending[fd]):
                poller.unregister(fd)
                del pending[fd]
    closed_s = time.monotonic() - started
    for sock in idle:
        sock.close()
    assert not pending, f"{len(pending)} idle connections still open after {closed_s:.1f} s"
    print(f"all closed by the server {closed_s:.2f} s after the first was opened")
    log = server.log().splitlines()[lines_before:]
    assert len(log) < 50 and not any("Too many open files" in line for line in log), log[:20]
    assert health_ms(server) < 100 and call(server.url, "/ready")[0] == 200
    assert time.monotonic() - started < 20


@slow
def test_a_stalled_keep_alive_request_is_closed(server):
    """The header deadline also runs from the first byte of a later request on a kept-alive connection."""
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
        sock.sendall(b"GET /heal")
        sock.settimeout(TIMEOUT_S + 3)
        started = time.monotonic()
        assert closed_by_server(sock) and time.monotonic() - started < TIMEOUT_S + 3


@slow
def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(server):
    with connect(server) as sock:
        sock.sendall(
            b"POST /predict/file HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 2147483648\r\n\r\n"
        )
        status, headers, body = read_response(sock)  # no body byte sent
        detail = assert_one_line_error(status, headers, body, {413})["detail"]
        assert "2147483648" in detail and headers["connection"] == "close" and closed_by_server(sock)


def stream_chunked(server, path: str, total: int) -> tuple[int, int | None, int]:
    """Streams a chunked multipart upload of `total` bytes until the server answers or closes:
    (bytes the client got to send, the status answered if any, the most bytes the server held in
    temp files meanwhile)."""
    chunk = b"0" * (256 * 1024)
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    sent, status, temp = 0, None, 0
    with connect(server) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n\r\n".encode()
        )
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
        sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < total and not readable(sock, 0):
                sock.sendall(framed)
                sent += len(chunk)
                temp = max(temp, server.temp_bytes())
        with contextlib.suppress(ConnectionError, TimeoutError):  # closed, its answer lost to a reset
            status = read_response(sock)[0]
    return sent, status, temp


@slow
def test_a_chunked_upload_over_the_limit_is_cut_off(server):
    rss_before = server.rss()[0]
    sent, status, temp = stream_chunked(server, "/predict/file", 300 * MB)
    print(f"\nchunked 300 MB upload: {sent / MB:.1f} MB sent before the server answered {status} or closed")
    print(f"server temp files at most {temp} B; RSS {rss_before / MB:.0f} -> {server.rss()[0] / MB:.0f} MB")
    assert status in (413, None) and sent < 16 * MB and temp <= BODY_LIMIT + 64 * 1024
    assert health_ms(server) < 100


@slow
def test_a_slow_body_gets_408_and_is_closed(server):
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        probes = pool.submit(probe_health, server, stop, 0.1)
        with connect(server, timeout=TIMEOUT_S + 5) as sock:
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{"
            )
            started, status = time.monotonic(), None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                while status is None and time.monotonic() - started < TIMEOUT_S + 3:
                    if readable(sock, 0.25):
                        status, headers, body = read_response(sock)
                    else:
                        sock.sendall(b" ")  # 4 bytes a second: the body would take minutes
            waited = time.monotonic() - started
            if status is not None:
                assert_one_line_error(status, headers, body, {408})
            assert waited < TIMEOUT_S + 2 and closed_by_server(sock)
        stop.set()
        latencies = probes.result()
    print(f"\nslow body: answered {status} after {waited:.2f} s; /health max {max(latencies):.1f} ms")
    assert max(latencies) < 100


# --- image bombs ---------------------------------------------------------------------------------


def png(width: int, height: int, rows: bytes) -> bytes:
    """A grayscale PNG built by hand: the header says width x height, whatever `rows` holds."""

    def part(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + part(b"IHDR", header) + part(b"IDAT", rows) + part(b"IEND", b"")


def large_digit_png(size=4096) -> bytes:
    """A real size x size image, white with a dark block: decodes to 16 MB of pixels, ~30 kB sent."""
    white, dark = b"\x00" + b"\xff" * size, b"\x00" + b"\xff" * (size // 4) + b"\x00" * (size // 2)
    dark += b"\xff" * (size - len(dark) + 1)
    quarter = size // 4
    raw = white * quarter + dark * (size - 2 * quarter) + white * quarter
    return png(size, size, zlib.compress(raw, 9))


def upload(server, data: bytes, name: str) -> tuple[int, dict, bytes]:
    boundary = "----bomb"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    with connect(server, timeout=30) as sock:
        sock.sendall(
            f"POST /predict/file HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
            + body
        )
        return read_response(sock)


@slow
def test_image_bombs_are_refused_without_stalling_the_server(server, task):
    if ".png" not in task.file_types:
        pytest.skip(f"task {task.__class__.__name__} reads no images")
    bomb = png(20000, 20000, zlib.compress(b"\x00" * 20001))  # 400 M pixels declared, 100 bytes sent
    large = large_digit_png()
    rss_before, peak_before = server.rss()
    stop = threading.Event()
    with ThreadPoolExecutor(6) as pool:  # within the decode pool's bound (1 decoding, 4 waiting)
        probes = pool.submit(probe_health, server, stop)
        uploads = [pool.submit(upload, server, data, "x.png") for data in (bomb, large, bomb, large, bomb)]
        answers = [future.result() for future in uploads]
        stop.set()
        latencies = probes.result()
    rss_after, peak = server.rss()
    print(f"\nbomb uploads ({len(bomb)} B) and 4096x4096 uploads ({len(large)} B): {[a[0] for a in answers]}")
    print(f"/health meanwhile: {len(latencies)} probes, max {max(latencies):.1f} ms")
    print(f"RSS {rss_before / MB:.0f} MB before (peak {peak_before / MB:.0f}), {rss_after / MB:.0f} after")
    print(f"peak RSS {peak / MB:.0f} MB")
    for status, headers, body in answers[::2]:
        detail = assert_one_line_error(status, headers, body, {413, 422})["detail"]
        assert "pixels" in detail, detail
    for status, headers, body in answers[1::2]:  # decoded: 200, or 422 if the task finds no digit
        assert status == 200 or assert_one_line_error(status, headers, body, {422})
    assert max(latencies) < 100
    assert peak - max(rss_before, peak_before) < 400 * MB  # one 4096x4096 decode at a time: ~250 MB
    assert call(server.url, "/predict/file", *multipart_png())[0] in (200, 422)


@slow
def test_uploads_past_the_decode_bound_get_503(server, task):
    if ".png" not in task.file_types:
        pytest.skip(f"task {task.__class__.__name__} reads no images")
    large, refused_before = large_digit_png(), decode_refusals(server)
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: upload(server, large, "x.png"), range(12)))
    statuses = sorted(status for status, _, _ in answers)
    print(f"\n12 concurrent 4096x4096 uploads: {statuses}")
    busy = [(headers, body) for status, headers, body in answers if status == 503]
    assert busy and statuses.count(200) >= 5 and set(statuses) <= {200, 503}
    for headers, body in busy:
        assert int(headers["retry-after"]) >= 1 and assert_one_line_error(503, headers, body, {503})
    assert decode_refusals(server) - refused_before == len(busy), "each refusal is counted in /metrics"


def decode_refusals(server) -> float:
    text = call(server.url, "/metrics")[1]
    counted = re.search(r'^predict_shed_requests_total\{reason="decode"\} (\S+)$', text, re.M)
    assert counted, "the decode refusals are a metric from the start"
    return float(counted[1])


def multipart_png() -> tuple[bytes, str]:
    boundary = "----small"
    data = png(8, 8, zlib.compress(b"".join(b"\x00" + bytes(range(0, 256, 32)) for _ in range(8))))
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.png"\r\n\r\n'
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
