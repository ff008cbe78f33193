"""Starting the server: uvicorn, its worker processes and what each one sets up.

`serve` runs `workers` processes that share the listening socket (auto: one per CPU core on a CPU
device, two per GPU on CUDA). The parent makes a runtime directory for them, removed when it exits:
the metrics each worker writes when there are several (prometheus_client's multiprocess mode, so
/metrics counts them all) and the slots that spread workers over several GPUs. Every process logs
through logs.py's queue, shares the CPU cores out among the workers, and exits 0 after a graceful
shutdown on SIGTERM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import itertools
import json
import math
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from ..config import ServeConfig
from . import logs

CONFIG_VARIABLE = "{{ cookiecutter.package_name | upper }}_SERVE_CONFIG"
RUNTIME_VARIABLE = "{{ cookiecutter.package_name | upper }}_SERVE_RUNTIME"
METRICS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when it is first imported
_held_slots: list[int] = []  # open slot files: a slot stays this process's until it exits


def app_from_environment():
    """The app factory uvicorn calls in each worker process (in the parent when workers is 1)."""
    logs.start()
    config = ServeConfig(**json.loads(os.environ[CONFIG_VARIABLE]))
    import torch

    torch.set_num_threads(threads_per_worker(worker_count(config)))
    runtime = os.environ.get(RUNTIME_VARIABLE)
    if runtime:
        config = dataclasses.replace(config, device=worker_device(config, Path(runtime) / "slots"))
    from .app import create_app

    return create_app(config)


def cpu_count() -> int:
    """The cores this process may use: its affinity (taskset, a container's --cpuset-cpus), capped by
    its cgroup's CPU quota (a container's --cpus), rounded up."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """This process's cgroup CPU quota in cores (cgroup v2's cpu.max, else v1's CFS quota), or None
    where there is none ("max" in v2, -1 in v1)."""
    v1 = root / "cpu"
    quota = fields(root / "cpu.max") or fields(v1 / "cpu.cfs_quota_us") + fields(v1 / "cpu.cfs_period_us")
    if len(quota) < 2 or not (quota[0].isdigit() and quota[1].isdigit()) or int(quota[1]) == 0:
        return None
    return int(quota[0]) / int(quota[1]) or None


def fields(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def worker_count(config: ServeConfig) -> int:
    """`workers`, with auto resolved: one process per CPU core on a CPU device, two per GPU on CUDA."""
    if config.workers != "auto":
        return int(config.workers)
    from ..device import resolve_device

    device = resolve_device(config.device)
    if device.type == "cuda":
        import torch

        return 2 * (1 if device.index is not None else torch.cuda.device_count())
    return cpu_count()


def threads_per_worker(workers: int) -> int:
    """torch's intra-op threads in each worker: the cores shared out. torch's default is every core
    in every process, so N workers would run N times as many busy threads as cores."""
    return max(1, cpu_count() // workers)


def worker_device(config: ServeConfig, slots: Path) -> str:
    """This worker's device: with `cuda` (or `auto` on a GPU machine) and several GPUs, the worker
    holding slot i runs on GPU i % count; any other setting stays as it is."""
    if config.device not in ("auto", "cuda"):
        return config.device
    import torch

    count = torch.cuda.device_count()
    if count < 2:
        return config.device
    from ..device import resolve_device

    if resolve_device(config.device, quiet=True).type != "cuda":
        return config.device
    return f"cuda:{claim_slot(slots) % count}"


def claim_slot(folder: Path) -> int:
    """The lowest slot no live process holds. A slot is a lock on a file, held while the process
    lives: a worker that replaces a dead one takes its slot, and so its GPU."""
    folder.mkdir(parents=True, exist_ok=True)
    for slot in itertools.count():
        fd = os.open(folder / f"slot-{slot}", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held_slots.append(fd)
        return slot
    raise AssertionError("unreachable")


def prepare_process() -> None:
    """What each serving process sets up before its server runs: logging through the queue, and exit
    status 0 for SIGTERM. uvicorn shuts down gracefully on SIGTERM, then restores the handler it found
    and raises the signal again: without a handler of ours, the process would die of it (status 143)."""
    logs.start()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_cleanly)


def _exit_cleanly(signum, frame) -> None:
    raise SystemExit(0)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvicorn's loop factory (its `loop` option takes an import string). It runs in each process
    before the server does, which makes it the place to prepare a worker process."""
    prepare_process()
    try:
        import uvloop
    except ImportError:
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    loop.set_exception_handler(logs.loop_exception_handler)
    return loop


def serve(config: ServeConfig) -> None:
    import uvicorn

    runtime = Path(tempfile.mkdtemp(prefix="{{ cookiecutter.package_name }}-serve-"))
    os.environ[RUNTIME_VARIABLE] = str(runtime)
    workers = worker_count(config)
    if workers > 1:  # one process counts alone, and faster: a lock and a pid check per update less
        (runtime / "metrics").mkdir()
        os.environ[METRICS_VARIABLE] = str(runtime / "metrics")  # read when prometheus_client is imported
    os.environ[CONFIG_VARIABLE] = json.dumps({**config.to_dict(), "workers": str(workers)})
    prepare_process()
    from .guard import GuardedHttpProtocol

    try:
        uvicorn.run(
            f"{__name__}:app_from_environment",
            factory=True,
            host=config.host,
            port=config.port,
            workers=workers,
            loop=f"{__name__}:new_event_loop",
            http=GuardedHttpProtocol,  # header deadline and connection cap (guard.py)
            log_config=None,  # uvicorn's records propagate to the root logger: logs.py's queue
            access_log=False,  # the app writes a structured access log with request ids
            timeout_graceful_shutdown=math.ceil(config.graceful_timeout_s),
            log_level="info",
        )
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
