"""Files the project publishes: atomic, with the umask's mode, no temporaries left by killed
writers, and one owner of the promoted model when trainings overlap."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.checkpoint import read, save
from {{ cookiecutter.package_name }}.files import HOST, atomic_write_bytes
from {{ cookiecutter.package_name }}.training.progress import Progress
from {{ cookiecutter.package_name }}.training.runs import promote

from .conftest import PROJECT_ROOT

WRITER = """
import sys, time
from pathlib import Path
from {{ cookiecutter.package_name }}.files import atomic_write_bytes
def write(handle):
    handle.write(b"partial")
    handle.flush()
    time.sleep(float(sys.argv[2]))
atomic_write_bytes(Path(sys.argv[1]), write)
"""


def writer(target: Path, seconds: float, umask: int = 0o022) -> subprocess.Popen:
    """A real process publishing `target` through atomic_write_bytes, `seconds` into its write."""
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target), str(seconds)],
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")},
        preexec_fn=lambda: os.umask(umask),
    )


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_published_files_get_the_mode_open_would_give(tmp_path, umask):
    process = writer(tmp_path / "model.pt", 0, umask)
    assert process.wait(timeout=60) == 0
    assert (tmp_path / "model.pt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert temporaries(tmp_path) == []


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "model.pt"
    process = writer(target, 60)
    deadline = time.monotonic() + 60
    while not temporaries(tmp_path):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    process.kill()
    process.wait()
    (stale,) = temporaries(tmp_path)
    assert f".model.pt.{HOST}.{process.pid}." in stale and not target.exists()
    # A dead writer's temporary of another file goes too (checkpoints are named by epoch); a live
    # writer's (this process) and another host's are not ours to remove.
    other_file = tmp_path / f".epoch-0001.pt.{HOST}.{process.pid}.abc.tmp"
    live = tmp_path / f".model.pt.{HOST}.{os.getpid()}.abc.tmp"
    elsewhere = tmp_path / f".model.pt.otherhost.{process.pid}.abc.tmp"
    for path in (other_file, live, elsewhere):
        path.touch()
    atomic_write_bytes(target, lambda handle: handle.write(b"whole"))
    assert target.read_bytes() == b"whole"
    assert temporaries(tmp_path) == sorted(p.name for p in (live, elsewhere))


def model_file(path: Path, run: str, started: float) -> Path:
    save(path, {"kind": "model", "run": run, "started": started})
    return path


def test_of_overlapping_trainings_the_one_started_last_keeps_the_model(tmp_path):
    model = tmp_path / "models" / "model.pt"
    first = model_file(tmp_path / "first.pt", "first", 100.0)
    second = model_file(tmp_path / "second.pt", "second", 200.0)
    # The second (started later) finishes first and is promoted.
    assert promote(second, model, since=200.0) == (True, None)
    # The first finishes afterwards: the second started after it, so the model stays the second's.
    assert promote(first, model, since=100.0) == (False, "second")
    assert read(model)["run"] == "second"
    # Had the first finished first, the second would replace it and say whose model it replaced.
    model.unlink()
    assert promote(first, model, since=100.0) == (True, None)
    assert promote(second, model, since=200.0) == (True, "first")
    assert read(model)["run"] == "second"
    # A model published before this run started is simply replaced.
    assert promote(first, model, since=time.time() + 60) == (True, None)
    assert temporaries(model.parent) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_users_lock_file_locks_just_as_well():
    """A container's user promoting into the host's models/, whose lock file the host created."""
    folder = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's own folders are closed to other users
    try:
        folder.chmod(0o777)
        (folder / ".model.pt.lock").touch(mode=0o644)
        # Imports as root (the interpreter may live under /root), then acts as user 4242.
        code = "import os; from pathlib import Path; from {{ cookiecutter.package_name }}.files import locked\n"
        code += f"os.seteuid(4242)\nwith locked(Path({str(folder / 'model.pt')!r})): print('held')"
        result = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0 and result.stdout == "held\n", result.stderr
    finally:
        shutil.rmtree(folder)


def test_a_second_signal_while_finishing_stops_at_once(capsys):
    with Progress(10, 0, show=False) as report:
        report.finishing()
        os.kill(os.getpid(), signal.SIGINT)
        assert "finishing the run first" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler runs before this returns
