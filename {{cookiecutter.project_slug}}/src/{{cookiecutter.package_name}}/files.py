"""Files the project publishes: written atomically, with the mode a plain open() would give, and
without the temporaries of writers that were killed piling up. Also the lock that serialises
publishers of one file."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

UMASK = os.umask(0o022)
os.umask(UMASK)  # reading the umask means setting it; put it straight back
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
# .<name>.<host>.<pid>.<random>.tmp: the writer that owns a temporary can be asked whether it lives.
TEMPORARY = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary file in the same directory, fsync it, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{HOST}.{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # open()'s mode: mkstemp's 0600 hides models from containers
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporaries beside `path` left by writers on this host that no longer run (a
    SIGKILL mid-write). Another host's, or a live writer's, are not ours to judge."""
    for candidate in path.parent.glob(".*.tmp"):
        match = TEMPORARY.match(candidate.name)
        if match and match["host"] == HOST and not alive(int(match["pid"])):
            with contextlib.suppress(OSError):  # tidying up: another user's file is theirs to remove
                candidate.unlink()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside `path` (.<name>.lock) while publishing it; the lock file stays,
    empty, so a waiting process never locks a file that was just deleted. Opened read-only: a lock
    file another user created (the host's, for a container's user) locks just as well."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
