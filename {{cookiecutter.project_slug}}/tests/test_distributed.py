"""Training with several processes under torchrun (gloo on the CPU), checked with real processes (slow)."""

import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from .conftest import TASKS, free_port
from .test_reproducibility import final_weights, resume, start, train, wait_for_epoch

pytestmark = pytest.mark.slow
NPROC = ("--nproc", "2")
ARGS = (f"task={TASKS[0]}", "optim.epochs=3", "seed=5")


def run_dirs(runs_dir: Path) -> list[Path]:
    return [path for path in runs_dir.iterdir() if path.is_dir()]


def manifest(runs_dir: Path) -> dict:
    (run,) = run_dirs(runs_dir)
    return json.loads((run / "manifest.json").read_text())


def parent_and_rank(proc: Path) -> tuple[int, int | None] | None:
    """A process's parent pid and its RANK variable; None once it has ended."""
    try:
        stat = (proc / "stat").read_text()
        environ = (proc / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(entry[5:]) for entry in environ if entry.startswith(b"RANK=")]
    return int(stat.rsplit(")", 1)[1].split()[1]), (ranks[0] if ranks else None)


def workers(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the training processes torchrun (running inside the launcher) started."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        described = parent_and_rank(proc)
        if described and described[0] == launcher_pid and described[1] is not None:
            found[described[1]] = int(proc.name)
    return found


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """A 2-process run, and the same run in one process (the accuracy it must reach)."""
    runs, single = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("single")
    result = train(runs, *NPROC, *ARGS)
    train(single, *ARGS)
    metrics = json.loads(next(runs.glob("*/metrics.json")).read_text())
    baseline = json.loads(next(single.glob("*/metrics.json")).read_text())
    return SimpleNamespace(
        runs=runs, result=result, metrics=metrics, baseline=baseline, weights=final_weights(runs)
    )


def test_two_processes_reach_the_single_process_accuracy(two_processes):
    assert two_processes.metrics["processes"] == 2
    assert two_processes.metrics["test_accuracy"] >= two_processes.baseline["test_accuracy"] - 0.03
    assert two_processes.result.stdout.count("test accuracy") == 1  # rank 0 reports, alone
    assert "x 2 processes" in two_processes.result.stdout


def test_rank_0_alone_writes_the_run(two_processes):
    runs = two_processes.runs
    (run,) = run_dirs(runs)
    written = sorted(str(path.relative_to(runs)) for path in runs.rglob("*") if path.is_file())
    (events,) = [name for name in written if "/events.out.tfevents." in name]  # TensorBoard: rank 0's
    written.remove(events)
    checkpoints = [f"{run.name}/checkpoints/epoch-000{epoch}-batch-00000.pt" for epoch in (1, 2, 3)]
    expected = [
        ".model.pt.lock",  # promotions take turns (files.locked)
        "model.pt",
        *(f"{run.name}/{name}" for name in ("checkpoint.pt", "config.yaml", "curves.png")),
        *checkpoints,
    ]
    expected += [f"{run.name}/manifest.json", f"{run.name}/metrics.json"]
    assert written == sorted(expected)
    launch = manifest(runs)["launch"]
    assert launch["world_size"] == 2 and launch["id"].startswith("torchrun-")


def test_same_seed_and_world_size_give_the_same_weights(two_processes, tmp_path):
    train(tmp_path, *NPROC, *ARGS)
    assert final_weights(tmp_path) == two_processes.weights


def test_a_killed_worker_is_restarted_and_the_run_ends_with_the_same_weights(two_processes, tmp_path):
    process = start(tmp_path, *NPROC, "--max-restarts", "1", *ARGS)
    wait_for_epoch(tmp_path, process, 1)
    ranks = workers(process.pid)
    assert 1 in ranks, "no training process with RANK=1 under the launcher"
    os.kill(ranks[1], signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert final_weights(tmp_path) == two_processes.weights
    resumed = manifest(tmp_path)["resumed"]
    assert [entry["launch"]["torchrun_restart"] for entry in resumed] == [1]
    assert "resuming run" in stderr


def test_sigterm_checkpoints_and_resume_auto_needs_the_same_process_count(two_processes, tmp_path):
    process = start(tmp_path, *NPROC, *ARGS)
    wait_for_epoch(tmp_path, process, 1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    assert stderr.count("training stopped by SIGTERM") == 1 and "RESUME=auto NPROC=2" in stderr
    assert "Traceback" not in stderr
    alone = resume(tmp_path, *ARGS)
    assert alone.returncode == 1 and "written by 2 process(es)" in alone.stderr
    result = resume(tmp_path, *NPROC, *ARGS)
    assert result.returncode == 0, result.stderr
    assert final_weights(tmp_path) == two_processes.weights


def test_two_machines_meet_at_a_rendezvous(two_processes, tmp_path):
    """Two launchers of one process each, as two machines would run them (here on loopback):
    the same group of two, so the same weights as two processes on one machine."""
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        start(
            tmp_path,
            "--nproc",
            "1",
            "--nnodes",
            "2",
            "--node-rank",
            str(rank),
            "--rdzv-endpoint",
            endpoint,
            "--rdzv-id",
            "loopback",
            *ARGS,
        )
        for rank in (0, 1)
    ]
    for node in nodes:
        _, stderr = node.communicate(timeout=300)
        assert node.returncode == 0, stderr
    assert final_weights(tmp_path) == two_processes.weights
    launch = manifest(tmp_path)["launch"]
    assert (launch["world_size"], launch["nodes"], launch["id"]) == (2, 2, "torchrun-loopback")
