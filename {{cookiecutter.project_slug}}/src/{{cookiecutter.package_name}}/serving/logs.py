"""Logging that never blocks serving.

Every record (the JSON access log, uvicorn's, asyncio's) goes into a bounded in-process queue that one
writer thread empties to stderr. When stderr stalls (a full pipe nobody reads), the queue fills and
further records are dropped and counted, never waited for; once the sink takes writes again, one line
says how many were lost. Connection-level errors (a client sending garbage, the process out of file
descriptors) are logged once per kind per interval, then as one line with the count of the others:
a flood of them costs a counter increment each, not a write each.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from logging.handlers import QueueHandler

QUEUE_SIZE = 10_000  # a burst of ~10 s of access log at 1,000 requests/s, a few MB at most
INTERVAL_S = 10.0  # connection-level errors: one line per kind per interval
STOP_WAIT_S = 1.0  # on exit, the writer's time to flush before it is abandoned (a stalled sink)
BATCH_S = 0.01  # the writer gathers records this long per write: one wakeup and write per batch, not per line
APP_LOGGER = "{{ cookiecutter.package_name }}.serve"
CONNECTION_LOGGERS = frozenset({"uvicorn.error", "asyncio"})

_STOP = object()
_writer: Writer | None = None


class Limiter:
    """Lets the first event of each kind through per interval and counts the rest."""

    def __init__(self, interval_s: float = INTERVAL_S, max_kinds: int = 1000) -> None:
        self.interval_s, self.max_kinds = interval_s, max_kinds
        self.kinds: dict[tuple, list] = {}  # kind -> [end of its interval, events suppressed in it]
        self.lock = threading.RLock()  # reentrant: a finalizer the collector runs inside may log

    def allow(self, kind: tuple) -> bool:
        now = time.monotonic()
        with self.lock:
            entry = self.kinds.get(kind)
            if entry is not None and now < entry[0]:
                entry[1] += 1
                return False
            if len(self.kinds) >= self.max_kinds:  # kinds are message templates: few; this is a backstop
                self.kinds.clear()
            self.kinds[kind] = [now + self.interval_s, 0]
            return True

    def expired(self, everything: bool = False) -> list[tuple[tuple, int]]:
        """(kind, suppressed count) of each interval that has ended (or of all, on exit) with events
        suppressed in it."""
        now = time.monotonic()
        with self.lock:
            done = [kind for kind, (end, _) in self.kinds.items() if everything or now >= end]
            return [(kind, count) for kind in done if (count := self.kinds.pop(kind)[1])]


class ConnectionErrorFilter(logging.Filter):
    """Rate-limits warnings and errors of the connection-level loggers, keyed by logger and message
    template (or the `kind` a record carries), so varying details still count as one kind."""

    def __init__(self, limiter: Limiter) -> None:
        super().__init__()
        self.limiter = limiter

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name not in CONNECTION_LOGGERS or record.levelno < logging.WARNING:
            return True
        return self.limiter.allow((record.name, getattr(record, "kind", None) or str(record.msg)))


class DroppingQueueHandler(QueueHandler):
    """Puts records on a queue of at most `limit`, and counts the ones that find it full instead of
    waiting (a plain QueueHandler would report a full queue as an error, with a traceback on stderr:
    the very sink that is stalled).

    No lock is held around a put: SimpleQueue.put is thread-safe and reentrant, so a record logged
    from a finalizer the garbage collector runs in the middle of another put cannot deadlock."""

    def __init__(self, records: queue.SimpleQueue, limit: int) -> None:
        super().__init__(records)
        self.limit, self.dropped = limit, 0
        self.drops = itertools.count(1)  # next() is atomic under the GIL: drops come from any thread
        self.on_drop: Callable[[int], None] | None = None
        self.hook_busy = threading.local()

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        try:
            self.enqueue(self.prepare(record))
        except Exception:
            self.handleError(record)
        return True

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The record as it is when it needs no formatting: the access log's lines are plain strings,
        and QueueHandler's copy of every record was a measurable part of a request's cost."""
        if record.args or record.exc_info or record.stack_info:
            return super().prepare(record)
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        if self.queue.qsize() < self.limit:  # threads racing past the check overshoot by a few
            self.queue.put_nowait(record)
            return
        self.dropped = next(self.drops)
        hook = self.on_drop
        if hook is not None and not getattr(self.hook_busy, "on", False):  # no re-entry from a finalizer
            self.hook_busy.on = True
            try:
                hook(1)
            finally:
                self.hook_busy.on = False


class LineFormatter(logging.Formatter):
    """The app's records are JSON lines as they are; the others get uvicorn's level prefix."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()  # QueueHandler.prepare already merged args and any traceback
        return message if record.name == APP_LOGGER else f"{record.levelname + ':':<9} {message}"


class Writer:
    """The thread that empties the queue into a file descriptor. It writes with os.write, outside
    logging's and sys.stderr's locks, so a write stalled on a full pipe blocks only this thread: not
    logging.shutdown, not the interpreter's exit."""

    def __init__(self, fd: int, handler: DroppingQueueHandler, limiter: Limiter) -> None:
        self.fd, self.handler, self.limiter = fd, handler, limiter
        self.formatter, self.reported = LineFormatter(), 0
        self.thread = threading.Thread(target=self.run, name="log-writer", daemon=True)

    def run(self) -> None:
        while True:
            try:
                records = [self.handler.queue.get(timeout=1.0)]
            except queue.Empty:
                records = []
            else:  # puts meanwhile cost the serving threads no wakeup of this one
                time.sleep(BATCH_S)
                records += drain(self.handler.queue)
            stopping = _STOP in records
            self.report(final=stopping)
            lines = [self.formatter.format(record) for record in records if record is not _STOP]
            if lines:
                self.write("\n".join(lines))
            if stopping:
                return

    def report(self, final: bool = False) -> None:
        """The records dropped since the last report, and the connection errors suppressed in each
        interval that has ended: one line each, written once the sink takes writes again."""
        dropped = self.handler.dropped
        if dropped > self.reported:
            self.write(json.dumps({"event": "log_records_dropped", "count": dropped - self.reported}))
            self.reported = dropped
        interval = f"{self.limiter.interval_s:g} s"
        for (name, kind), count in self.limiter.expired(everything=final):
            self.write(f"WARNING:  {name}: {kind!r} {count} more times in the last {interval}")

    def write(self, line: str) -> None:
        data = (line + "\n").encode("utf-8", "backslashreplace")
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:  # the reader is gone (EPIPE): nothing to write to any more
            pass

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """Flushes what the sink takes within `wait_s`, then leaves the (daemon) thread behind."""
        self.handler.queue.put(_STOP)
        self.thread.join(timeout=wait_s)


def drain(records: queue.SimpleQueue) -> list:
    """Everything in the queue now, without waiting."""
    taken = []
    with contextlib.suppress(queue.Empty):
        while True:
            taken.append(records.get_nowait())
    return taken


def start(stream=None, queue_size: int = QUEUE_SIZE) -> DroppingQueueHandler:
    """Routes this process's logging through the queue (once per process; later calls return the
    same handler). Records propagate to the root logger, uvicorn's included (`log_config=None`)."""
    global _writer
    if _writer is not None:
        return _writer.handler
    limiter = Limiter()
    handler = DroppingQueueHandler(queue.SimpleQueue(), queue_size)
    handler.addFilter(ConnectionErrorFilter(limiter))
    _writer = Writer((stream or sys.stderr).fileno(), handler, limiter)
    _writer.thread.start()
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings too: they would otherwise write to stderr directly
    logging.raiseExceptions = False  # a failing handler must not print its traceback to stderr either
    atexit.register(_writer.stop)
    return handler


def count_drops(increment: Callable[[int], None]) -> None:
    """Calls `increment(n)` for the n records dropped so far and `increment(1)` for each one after."""
    if _writer is not None:
        if _writer.handler.dropped:
            increment(_writer.handler.dropped)
        _writer.handler.on_drop = increment


def loop_exception_handler(loop, context: dict) -> None:
    """The event loop's exception handler (a failed accept(), a transport error): through the
    connection-error limiter, one line per kind per interval."""
    exception = context.get("exception")
    message = context.get("message") or "unhandled exception in the event loop"
    details = ", ".join(
        f"{key}={value!r}" for key, value in context.items() if key not in ("message", "exception")
    )
    kind = f"{message} ({type(exception).__name__})" if exception is not None else message
    logging.getLogger("asyncio").error(
        "%s%s", message, f" ({details[:500]})" if details else "", exc_info=exception, extra={"kind": kind}
    )
