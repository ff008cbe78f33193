"""Hostile and broken clients: bounds on what one client can hold of the server.

- `GuardedHttpProtocol` (uvicorn's HTTP protocol): a client must send a request's headers within
  `client_timeout_s` of connecting, or of the first byte of a later keep-alive request; and a worker
  keeps at most `max_connections` open, closing the longest-idle one to admit a new client.
- `BodyGuard` (ASGI): a body over its limit gets 413 before it is read (declared) or as soon as the
  count passes the limit (chunked), and one that takes over `client_timeout_s` to arrive gets 408;
  both close the connection.
- `DecodePool`: uploads are decoded on a few threads, off the event loop, with a bounded wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..config import ServeConfig

log = logging.getLogger("{{ cookiecutter.package_name }}.serve")

RESERVE_FILES = 128  # open files kept free of connections: the model, logs, temp files, accept bursts
MULTIPART_ALLOWANCE = 16 * 1024  # an upload's boundaries and part headers, around its max_body_bytes


# --- connections -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionLimits:
    client_timeout_s: float
    max_connections: int


def open_files_limit() -> int:
    """The open-files soft limit, first raised to the hard limit where the system allows it."""
    try:
        import resource
    except ImportError:  # no rlimits (Windows): assume the common default
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):  # over the kernel's nr_open, or not allowed
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_cap(max_connections: int, files: int) -> int:
    """`max_connections`, 0 meaning automatic, kept under the open-files limit less the reserve:
    past it accept() fails with EMFILE and the loop logs a traceback per attempt."""
    automatic = max(files - RESERVE_FILES, files // 2)
    return min(max_connections, automatic) if max_connections else automatic


@functools.cache
def connection_limits() -> ConnectionLimits:
    """This worker's limits, from the serve config that `serve` passes to every worker process."""
    from .server import CONFIG_VARIABLE

    raw = os.environ.get(CONFIG_VARIABLE)
    config = ServeConfig(**json.loads(raw)) if raw else ServeConfig()
    files = open_files_limit()
    limits = ConnectionLimits(config.client_timeout_s, connection_cap(config.max_connections, files))
    event = {"event": "connection-limits", "max_connections": limits.max_connections, "open_files": files}
    log.info(json.dumps({**event, "client_timeout_s": limits.client_timeout_s, "pid": os.getpid()}))
    return limits


def idle_connections(server_state) -> dict:
    """The server's connections with no request in progress, the longest idle first (a dict keeps
    insertion order): finding whom to close at the cap costs O(1), not a scan of every socket."""
    return _IDLE.setdefault(server_state, {})


_IDLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def make_room(connections, idle: dict, cap: int) -> bool:
    """Whether a new connection may open. At the cap, the connection idle longest (no request in
    progress) is closed to make room, so a new client such as a health probe still gets in; with
    none idle, the new one is refused."""
    if len(connections) < cap:
        return True
    while idle:
        victim = next(iter(idle))
        del idle[victim]
        if not victim.transport.is_closing():
            connections.discard(victim)  # gone now: the next arrival in this burst picks another
            victim.transport.abort()
            return True
    return False


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on request headers and a cap on connections.
    uvicorn's own keep-alive timeout covers only the idle time after a response; a client that
    connects and sends nothing, or half a request line, would otherwise hold its socket for ever.
    Module-level, so that uvicorn can pickle it into its worker processes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits = connection_limits()
        self.idle = idle_connections(self.server_state)
        self.header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        admitted = make_room(self.connections, self.idle, self.limits.max_connections)
        super().connection_made(transport)
        if not admitted:  # every open connection is mid-request: this one waits its turn elsewhere
            transport.abort()
            return
        self.idle[self] = None
        self.arm_header_deadline()

    def connection_lost(self, exc) -> None:
        self.idle.pop(self, None)
        self.cancel_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.header_deadline is None and not self.in_request():  # a new request's first bytes
            self.arm_header_deadline()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self.idle.pop(self, None)
        self.cancel_header_deadline()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        if not self.pipeline and not self.transport.is_closing():  # idle from now: last in line
            self.idle.pop(self, None)
            self.idle[self] = None
        super().on_response_complete()

    def in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def arm_header_deadline(self) -> None:
        self.header_deadline = self.loop.call_later(self.limits.client_timeout_s, self.headers_too_slow)

    def cancel_header_deadline(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def headers_too_slow(self) -> None:
        # No request exists yet to answer (the app never saw one): closing is the whole reply.
        self.header_deadline = None
        if not self.transport.is_closing():
            self.transport.abort()


# --- request bodies ----------------------------------------------------------------------------


class _Refused(Exception):
    """The body broke a limit; the guard answers instead of the app."""


class _GuardedBody:
    """The app's `receive`, counting body bytes against `limit` and bounded by `deadline`."""

    def __init__(self, receive, limit: int, timeout_s: float) -> None:
        self.inner, self.limit, self.timeout_s = receive, limit, timeout_s
        self.deadline = asyncio.get_running_loop().time() + timeout_s
        self.received, self.complete = 0, False
        self.refusal: tuple[int, str] | None = None

    def refuse(self, status: int, detail: str):
        self.refusal = (status, detail)
        raise _Refused(detail)

    async def receive(self):
        if self.complete or self.refusal:  # past the body: the app is waiting for a disconnect
            return await self.inner()
        try:
            async with asyncio.timeout(self.deadline - asyncio.get_running_loop().time()):
                message = await self.inner()
        except TimeoutError:
            self.refuse(408, f"the request body took over {self.timeout_s:g} s to arrive")
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.refuse(413, f"body is over the limit of {self.limit} bytes")
            self.complete = not message.get("more_body", False)
        return message


class BodyGuard:
    """Plain ASGI, inside AccessLog (whose request id the answers carry). `limits` maps a path to its
    body limit; other paths get `default_limit`. A refused body is never read further, and the
    answer closes the connection, so the client cannot go on sending into it."""

    def __init__(self, app, default_limit: int, limits: dict[str, int], timeout_s: float) -> None:
        self.app, self.default_limit, self.limits, self.timeout_s = app, default_limit, limits, timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default_limit)
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            await refuse(scope, send, 413, f"body of {declared} bytes is over the limit of {limit}")
            return
        body = _GuardedBody(receive, limit, self.timeout_s)
        started = False

        async def guarded_send(message) -> None:
            nonlocal started
            if body.refusal and not started:  # the app's answer to the broken read (a 400): ours instead
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_Refused):  # raised through the app from its read of the body
            await self.app(scope, body.receive, guarded_send)
        if body.refusal and not started:
            await refuse(scope, send, *body.refusal)


def header(scope, name: bytes) -> str:
    """A request header's value from the ASGI scope ("" when absent)."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


def declared_length(scope) -> int | None:
    value = header(scope, b"content-length")
    return int(value) if value.isdigit() else None  # the HTTP parser already refused junk


async def refuse(scope, send, status: int, detail: str) -> None:
    request_id = scope.get("state", {}).get("request_id")
    body = json.dumps({"detail": detail, "request_id": request_id}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # what is left of the body is never read: the connection must go
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --- decoding uploads --------------------------------------------------------------------------


class Busy(Exception):
    """Too many uploads are already waiting to decode."""


class DecodePool:
    """Threads that decode uploads, so a large image never stalls the event loop (health probes,
    other requests). One by default: a 4096x4096 image takes ~250 MB and ~0.3 s to decode, and there
    is a worker process per core already. At most `threads + max_waiting` uploads are in it; past
    that, callers get Busy at once rather than a queue without limit."""

    def __init__(self, threads: int = 1, max_waiting: int = 4) -> None:
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="decode")
        self.slots = threading.BoundedSemaphore(threads + max_waiting)

    async def run(self, function, *args):
        if not self.slots.acquire(blocking=False):
            raise Busy("too many uploads are waiting to be decoded")
        try:
            future = self.executor.submit(function, *args)
        except BaseException:
            self.slots.release()
            raise
        # Released when the work ends, not when the caller stops waiting: a cancelled request's
        # decode still occupies its thread until it finishes.
        future.add_done_callback(lambda _: self.slots.release())
        return await asyncio.wrap_future(future)
