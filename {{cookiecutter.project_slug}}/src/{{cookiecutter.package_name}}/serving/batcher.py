"""Dynamic micro-batching with admission control: concurrent requests share forward passes on one
inference thread, behind a queue bounded in samples (`max_queue_samples`) and in waiting time
(`max_queue_ms`). Whatever cannot be answered in time is refused at once with a 503 and Retry-After,
rather than queued until every client times out; work whose client has left is never run."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..config import ServeConfig
from ..predict import Prediction

REASONS = ("queue_full", "queue_timeout", "disconnected", "decode")  # the shed-requests metric's labels
SHEDDING_WINDOW_S = 1.0  # /ready reports shedding for this long after the last 503


class Overloaded(Exception):
    """Refused or dropped for want of capacity: a 503 with the one-line `detail` and a Retry-After of
    `retry_after` whole seconds."""

    def __init__(self, reason: str, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.retry_after = reason, detail, retry_after


class ClientDisconnected(Exception):
    """The client closed its connection before its answer; its queued work was withdrawn, never run."""


class Job:
    """One request: run in slices of at most max_batch_size samples, answered once every slice is."""

    __slots__ = ("arrived", "future", "queued", "results", "samples", "taken")

    def __init__(self, samples: np.ndarray, future: asyncio.Future, arrived: float) -> None:
        self.samples, self.future, self.arrived = samples, future, arrived
        self.taken = 0  # samples already handed to forward passes
        self.results: list[Prediction] = []
        self.queued = True  # some of its samples are still in the queue


Slice = tuple[Job, int, int]  # samples[start:end] of a job, in one forward pass


class MicroBatcher:
    """Groups concurrent requests into forward passes on one inference thread, and sheds what the
    model cannot reach in time."""

    def __init__(
        self, predict: Callable[[np.ndarray], list[Prediction]], config: ServeConfig, metrics
    ) -> None:
        self.predict = predict
        self.max_batch = config.max_batch_size
        self.max_wait = config.max_wait_ms / 1000
        self.max_queue = config.max_queue_samples
        self.budget_ms, self.budget = config.max_queue_ms, config.max_queue_ms / 1000
        self.metrics = metrics
        for reason in REASONS:  # exposed at 0 from the start
            metrics["shed"].labels(reason)
        self.jobs: deque[Job] = deque()
        self.queued = 0  # samples in self.jobs not yet handed to a forward pass
        self.wakeup = asyncio.Event()
        self.busy = False  # a forward pass is running
        self.rate = 0.0  # samples per second of recent forward passes, for Retry-After
        self.last_shed, self.last_reason = -math.inf, ""
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.task: asyncio.Task | None = None

    async def __call__(
        self, samples: np.ndarray, receive: Callable[[], Awaitable[dict]] | None = None
    ) -> list[Prediction]:
        """The predictions for `samples`. `receive`, the request's ASGI receive once its body is read,
        returns only when the client disconnects: that withdraws the request's queued work."""
        job = self._admit(samples)
        watcher = None
        if receive is not None:  # one task per request: ~5 us (a request costs the server ~500 us)
            watcher = asyncio.ensure_future(receive())
            watcher.add_done_callback(lambda done: self._on_receive(job, done))
        try:
            return await job.future
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
            self._withdraw(job)  # still queued only when the handler itself was cancelled

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        for job in list(self.jobs):  # none after a graceful shutdown, which lets requests finish
            self._withdraw(job)
            if not job.future.done():
                job.future.set_exception(Overloaded("shutdown", "server shutting down; retry later", 1))
        self.executor.shutdown(wait=True)

    def shedding(self) -> str | None:
        """Why the server is shedding load, while it refused a request in the last second."""
        ago = time.monotonic() - self.last_shed
        return f"{self.last_reason} ({ago * 1000:.0f} ms ago)" if ago < SHEDDING_WINDOW_S else None

    # --- admission ---------------------------------------------------------------------------

    def _admit(self, samples: np.ndarray) -> Job:
        now, count = time.monotonic(), len(samples)
        # An empty queue takes any request (at most max_request_samples): refusing it would be final.
        if self.jobs and self.queued + count > self.max_queue:
            text = f"{self.queued} samples queued, {count} more would pass max_queue_samples={self.max_queue}"
            raise self.shed("queue_full", text)
        waited = self._oldest_wait(now)
        if waited > self.budget:  # the model is behind: this request would only time out in the queue
            text = f"a request has waited {waited * 1000:.0f} ms, over max_queue_ms={self.budget_ms:g}"
            raise self.shed("queue_timeout", text)
        job = Job(samples, asyncio.get_running_loop().create_future(), now)
        self.jobs.append(job)
        self._count_queued(count)
        self.wakeup.set()
        return job

    def _oldest_wait(self, now: float) -> float:
        """How long the oldest request no forward pass has started on has waited for a busy model
        (0 while the model is idle: the batcher is then only gathering a batch)."""
        if not self.busy or not self.jobs:
            return 0.0
        oldest = self.jobs[0] if not self.jobs[0].taken else (self.jobs[1] if len(self.jobs) > 1 else None)
        return now - oldest.arrived if oldest is not None else 0.0

    def shed(self, reason: str, text: str) -> Overloaded:
        """The 503 for a request refused for want of capacity, counted, and shown by /ready."""
        self.metrics["shed"].labels(reason).inc()
        self.last_shed, self.last_reason = time.monotonic(), text
        retry_after = min(60, max(1, math.ceil(self.queued / self.rate))) if self.rate else 1
        return Overloaded(reason, f"server overloaded: {text}; retry later", retry_after)

    def _count_queued(self, change: int) -> None:
        self.queued += change
        self.metrics["queued"].set(self.queued)

    def _withdraw(self, job: Job) -> None:
        if job.queued:
            job.queued = False
            self.jobs.remove(job)  # the queue holds a few hundred requests at most
            self._count_queued(job.taken - len(job.samples))

    def _on_receive(self, job: Job, watcher: asyncio.Future) -> None:
        if watcher.cancelled() or watcher.exception() is not None or job.future.done():
            return
        if watcher.result().get("type") == "http.disconnect":
            self._withdraw(job)
            self.metrics["shed"].labels("disconnected").inc()
            job.future.set_exception(ClientDisconnected("the client disconnected"))

    # --- the inference loop --------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            samples = np.concatenate([job.samples[start:end] for job, start, end in batch])
            self.metrics["batch"].observe(len(samples))
            self.busy, started = True, time.perf_counter()
            try:
                predictions = await loop.run_in_executor(self.executor, self.predict, samples)
            except Exception as err:  # the model failed: every request in the batch gets the error
                for job, _, _ in batch:
                    self._withdraw(job)
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            finally:
                self.busy = False
            self._measure(len(samples), time.perf_counter() - started)
            self._answer(batch, predictions)

    async def _next_batch(self) -> list[Slice]:
        while True:
            while not self.jobs:
                self.wakeup.clear()
                await self.wakeup.wait()
            reached = time.monotonic()  # what queued before now waited for the model, not for company
            if self.max_wait and self.queued < self.max_batch:
                await self._gather(reached + self.max_wait)
            batch = self._take(reached)
            if batch:  # empty when every request left or timed out meanwhile
                return batch

    async def _gather(self, deadline: float) -> None:
        """Wait for more requests until the batch is full or the deadline passes (`max_wait_ms`)."""
        while self.jobs and self.queued < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self, reached: float) -> list[Slice]:
        """Up to max_batch_size samples from the head of the queue, a large request split across
        passes; requests that waited longer than max_queue_ms for the model are dropped."""
        batch, room = [], self.max_batch
        while self.jobs and room:
            job = self.jobs[0]
            if not job.taken and reached - job.arrived > self.budget:
                self._expire(job)
                continue
            end = min(len(job.samples), job.taken + room)
            batch.append((job, job.taken, end))
            room -= end - job.taken
            self._count_queued(job.taken - end)
            job.taken = end
            if end == len(job.samples):
                self.jobs.popleft()
                job.queued = False
        return batch

    def _expire(self, job: Job) -> None:
        self._withdraw(job)
        waited = (time.monotonic() - job.arrived) * 1000
        text = f"queued {waited:.0f} ms without reaching the model, over max_queue_ms={self.budget_ms:g}"
        job.future.set_exception(self.shed("queue_timeout", text))

    def _measure(self, samples: int, seconds: float) -> None:
        rate = samples / max(seconds, 1e-6)
        self.rate = rate if not self.rate else 0.8 * self.rate + 0.2 * rate

    def _answer(self, batch: list[Slice], predictions: list[Prediction]) -> None:
        offset = 0
        for job, start, end in batch:
            part = predictions[offset : offset + end - start]
            offset += end - start
            if job.future.done():  # the client left, or an earlier slice failed
                continue
            job.results.extend(part)
            if len(job.results) == len(job.samples):
                job.future.set_result(job.results)
