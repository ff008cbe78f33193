"""The generated SLURM support against a real one-node cluster: `make slurm` submits
slurm/train.sbatch, the job trains with torchrun (2 processes, gloo on the CPU), and a preempted job
(USR1 to the batch shell, as `--signal=B:USR1@120` sends before the time limit) checkpoints, is
requeued and resumes the same run to the same weights as a job that was never stopped (slow)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from .conftest import bake_ok, run_make
from .slurm import FINAL_STATES, SlurmCluster

pytestmark = pytest.mark.slow

# Epochs of both the uninterrupted and the preempted job (their weights are compared): about 1.5 s
# each with 2 processes, plus about 8 s of startup, and enough left after the first checkpoint to
# preempt the job before it ends.
EPOCHS = 6
JOB_TIMEOUT = 240  # seconds; a job takes about 25 here, more on a loaded machine
SUBMITTED = re.compile(r"submitted job (\d+): log runs/slurm-(\d+)\.out")
SBATCH_COMMAND = re.compile(r"job=\$\((.*sbatch --parsable.*)\) &&")


def sbatch_command(project: Path, *variables: str) -> tuple[dict[str, str], list[str]]:
    """The environment and the flags `make -n slurm` would give sbatch."""
    result = run_make(project, "-n", "slurm", *variables)
    assert result.returncode == 0, result.stdout + result.stderr
    match = SBATCH_COMMAND.search(result.stdout)
    assert match, result.stdout
    words = shlex.split(match.group(1))
    at = words.index("sbatch")
    assert words[at + 1] == "--parsable" and words[-1] == "slurm/train.sbatch", words
    return dict(word.split("=", 1) for word in words[:at]), words[at + 2 : -1]


def submit(cluster: SlurmCluster, project: Path, where: Path, *args: str, nproc: int = 2) -> str:
    """`make slurm` on the CPU, its runs and model under `where`; returns the job id."""
    overrides = [*args, f"output.runs_dir={where / 'runs'}", f"output.model_path={where / 'model.pt'}"]
    variables = ["NODES=1", "GPUS_PER_NODE=0", f"NPROC_PER_NODE={nproc}", f"ARGS={' '.join(overrides)}"]
    result = run_make(project, "slurm", *variables, env=cluster.env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    match = SUBMITTED.search(result.stdout)
    assert match and match.group(1) == match.group(2), result.stdout
    return match.group(1)


def run_dirs(runs_dir: Path) -> list[Path]:
    return sorted(path for path in runs_dir.glob("*") if path.is_dir())


def run_of_job(runs_dir: Path, job_id: str) -> Path | None:
    """The run a job started: its manifest's launch id is slurm-<job>."""
    for manifest in runs_dir.glob("*/manifest.json"):  # written atomically: never half a file
        if json.loads(manifest.read_text())["launch"]["id"] == f"slurm-{job_id}":
            return manifest.parent
    return None


def wait_for_run(cluster: SlurmCluster, job_id: str, runs_dir: Path, checkpoint: bool) -> Path:
    """The job's run once it exists (with `checkpoint`, once it has a resumable checkpoint)."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        run = run_of_job(runs_dir, job_id)
        if run is not None and (not checkpoint or any((run / "checkpoints").glob("*.pt"))):
            return run
        state = cluster.job(job_id)["JobState"]
        if state in FINAL_STATES or time.monotonic() > deadline:
            cluster.wait_for(job_id, set(), timeout=0)  # fails, with the job's output and the logs
        time.sleep(0.2)


def completed(cluster: SlurmCluster, job_id: str, where: Path) -> SimpleNamespace:
    """Wait for the job to complete; its one run, manifest, metrics and log."""
    job = cluster.wait_for(job_id, {"COMPLETED"}, timeout=JOB_TIMEOUT)
    log = Path(job["StdOut"]).read_text()
    runs = run_dirs(where / "runs")
    assert len(runs) == 1, (runs, log)
    manifest = json.loads((runs[0] / "manifest.json").read_text())
    metrics_file = runs[0] / "metrics.json"
    assert metrics_file.is_file(), (sorted(runs[0].rglob("*")), log)
    metrics = json.loads(metrics_file.read_text())
    return SimpleNamespace(job_id=job_id, job=job, run=runs[0], manifest=manifest, metrics=metrics, log=log)


@pytest.fixture
def cluster(slurm_cluster: SlurmCluster):
    """The session's cluster, with no job of this test left behind, whatever the outcome."""
    try:
        yield slurm_cluster
    finally:
        slurm_cluster.cancel_all()


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster: SlurmCluster, cpu_project: Path, tmp_path_factory) -> SimpleNamespace:
    """A job trained for EPOCHS without a stop: what a preempted job must reproduce."""
    where = tmp_path_factory.mktemp("uninterrupted")
    try:
        job_id = submit(slurm_cluster, cpu_project, where, f"optim.epochs={EPOCHS}")
        return completed(slurm_cluster, job_id, where)
    finally:
        slurm_cluster.cancel_all()


def test_sbatch_script_and_make_flags(tmp_path: Path) -> None:
    project = bake_ok(tmp_path)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    check = subprocess.run(["shellcheck", "slurm/train.sbatch"], cwd=project, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    env, flags = sbatch_command(project, "NODES=1", "GPUS_PER_NODE=0", "NPROC_PER_NODE=2")
    assert flags == ["--nodes=1", "--cpus-per-task=2"], flags
    assert env["NPROC_PER_NODE"] == "2" and env["TRAIN_ARGS"].split() == ["device=cpu"], env
    assert env["ENV_DIR"] == str(project / ".venv") and env["MAX_RESTARTS"] == "0", env

    variables = ["NODES=2", "GPUS_PER_NODE=4", "TIME=1:00:00", "PARTITION=gpu", "ACCOUNT=lab", "SEED=7"]
    env, flags = sbatch_command(project, *variables, "ARGS=optim.epochs=3")
    assert sorted(flags) == sorted(
        [
            "--nodes=2",
            "--gpus-per-node=4",
            "--cpus-per-task=4",
            "--time=1:00:00",
            "--partition=gpu",
            "--account=lab",
        ]
    ), flags
    assert env["NPROC_PER_NODE"] == "4", env
    assert env["TRAIN_ARGS"].split() == ["seed=7", "optim.epochs=3"], env


def test_make_slurm_trains_with_two_processes(uninterrupted: SimpleNamespace, tmp_path: Path) -> None:
    job_id, manifest, log = uninterrupted.job_id, uninterrupted.manifest, uninterrupted.log
    assert manifest["status"] == "complete", manifest
    launch = manifest["launch"]
    assert launch["world_size"] == 2 and launch["nodes"] == 1, launch
    assert launch["slurm_job_id"] == job_id and launch["id"] == f"slurm-{job_id}", launch
    assert launch["slurm_restart"] == 0 and manifest["resumed"] == [], manifest
    assert uninterrupted.metrics["processes"] == 2 and uninterrupted.metrics["epochs"] == EPOCHS
    assert re.fullmatch(r"[0-9a-f]{64}", uninterrupted.metrics["weights_sha256"]), uninterrupted.metrics
    assert (uninterrupted.run.parent.parent / "model.pt").is_file()  # promoted to output.model_path
    assert f"job {job_id} (restart 0): 1 node(s) x 2 process(es)" in log, log
    assert "Traceback" not in log, log


def test_preempted_job_resumes_to_the_same_weights(
    cluster: SlurmCluster, cpu_project: Path, uninterrupted: SimpleNamespace, tmp_path: Path
) -> None:
    job_id = submit(cluster, cpu_project, tmp_path, f"optim.epochs={EPOCHS}")
    wait_for_run(cluster, job_id, tmp_path / "runs", checkpoint=True)
    cluster.signal_batch(job_id, "USR1")  # what --signal=B:USR1@120 sends before the time limit
    cluster.wait_for(job_id, {"PENDING"}, timeout=120)  # checkpointed, stopped, requeued
    cluster.start_now(job_id)
    result = completed(cluster, job_id, tmp_path)

    assert cluster.job(job_id)["Restarts"] == "1", cluster.job(job_id)
    manifest, log = result.manifest, result.log
    assert manifest["status"] == "complete" and manifest["launch"]["slurm_restart"] == 0, manifest
    resumed = [entry for entry in manifest["resumed"] if entry["launch"]["slurm_restart"] == 1]
    assert len(resumed) == 1 and resumed[0]["launch"]["slurm_job_id"] == job_id, manifest["resumed"]
    assert resumed[0]["from"] is not None, resumed  # from a checkpoint, not from the start
    assert f"job {job_id}: preemption signal; checkpointing, then requeueing" in log, log
    assert f"job {job_id} (restart 1)" in log, log
    assert f"resuming run {result.run.name} from {resumed[0]['from']}" in log, log
    assert "Traceback" not in log, log
    assert result.metrics["weights_sha256"] == uninterrupted.metrics["weights_sha256"], (
        "a preempted and resumed job ends with other weights than an uninterrupted one"
    )


def test_jobs_sharing_a_node_do_not_share_a_rendezvous(
    cluster: SlurmCluster, cpu_project: Path, tmp_path: Path
) -> None:
    """Two single-node jobs on one node at once. With one fixed rendezvous port the second job's
    torchrun joins the first job's store, and fails with RendezvousConnectionError when that job
    ends first."""
    first, second = tmp_path / "first", tmp_path / "second"
    first_id = submit(cluster, cpu_project, first, "optim.epochs=3", nproc=1)
    wait_for_run(cluster, first_id, first / "runs", checkpoint=False)  # its rendezvous is up
    second_id = submit(cluster, cpu_project, second, "optim.epochs=6", nproc=1)
    results = [completed(cluster, first_id, first), completed(cluster, second_id, second)]

    ports = set()
    for result in results:
        assert "Traceback" not in result.log, result.log
        ports |= set(re.findall(r"rendezvous \S+:(\d+)", result.log))
    assert len(ports) == 2, ports
