"""The server's Prometheus metrics, counted across all worker processes.

With several workers, `serve` sets PROMETHEUS_MULTIPROC_DIR before prometheus_client is first
imported, which puts it in multiprocess mode: each process writes its values to files there and
/metrics sums every worker's (a gauge must say how, with `multiprocess_mode`, e.g. "livesum").
Without the variable (one worker, or an app made by create_app in a test), the metrics are this
process's alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values

from . import logs


def multiprocess_mode() -> bool:
    """Whether prometheus_client chose multiprocess values (it does once, when first imported)."""
    return values.ValueClass is not values.MutexValue


def create_metrics() -> tuple[dict, CollectorRegistry]:
    """(the metrics, the registry /metrics exposes), the dropped log records counted as they happen."""
    if multiprocess_mode():
        forget_dead_workers()
        exposed = CollectorRegistry()
        multiprocess.MultiProcessCollector(exposed)
        metrics = make_metrics(CollectorRegistry())  # written to files: exposed through the collector
    else:
        exposed = CollectorRegistry()
        metrics = make_metrics(exposed)
    logs.count_drops(metrics["log_records_dropped"].inc)
    return metrics, exposed


def mark_process_dead() -> None:
    """Drops this worker's live gauges from the sums (on shutdown; a no-op outside multiprocess mode)."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(os.getpid())


def forget_dead_workers() -> None:
    """The live gauges of workers that died without shutting down (the worker replacing one does this
    as it starts); their counters and histograms stay in the sums, as counts should."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    for path in Path(folder).glob("gauge_live*_*.db") if folder else ():
        pid = int(path.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid)
        except PermissionError:  # alive, another user's
            pass


def make_metrics(registry: CollectorRegistry) -> dict:
    return {
        "requests": Counter(
            "http_requests", "HTTP requests by path and status", ["path", "status"], registry=registry
        ),
        "latency": Histogram(
            "http_request_duration_seconds",
            "Request latency",
            ["path"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        ),
        "batch": Histogram(
            "predict_batch_size",
            "Samples per forward pass",
            registry=registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        ),
        "log_records_dropped": Counter(
            "log_records_dropped", "Log records dropped because stderr was not taking them", registry=registry
        ),
        "shed": Counter(
            "predict_shed_requests",
            "Predictions refused or dropped before the model, by reason",
            ["reason"],
            registry=registry,
        ),
        "queued": Gauge(
            "predict_queue_samples",
            "Samples waiting for the model",
            registry=registry,
            multiprocess_mode="livesum",
        ),
    }
