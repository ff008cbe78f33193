"""A real one-node SLURM cluster (munged, slurmctld, slurmd) for tests of the generated sbatch script.

Everything Slurm writes lives in a temp dir named by SLURM_CONF, so the machine's own Slurm setup
(if any) is untouched. munged is shared: it is started only when none answers, and then stopped
again. Needs root and Debian's slurm-wlm and munge (`make slurm-tools`); otherwise the tests skip.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

COMMANDS = ("slurmctld", "slurmd", "munged", "munge", "unmunge", "sbatch", "srun", "scontrol", "sinfo")
MUNGE_PID_FILE = Path("/run/munge/munged.pid")
# States a job never leaves by itself: waiting past them can only time out.
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}


class SlurmUnavailable(Exception):
    """Why no cluster can run here (missing packages, not root, a daemon that will not start)."""


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports free right now: all sockets stay open until every port is picked."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in socks]


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"({error})"


def parse_record(line: str) -> dict[str, str]:
    """`scontrol -o` output: space-separated Key=Value pairs (a value may hold spaces, not ` Key=`)."""
    return dict(re.findall(r"(\S+?)=(.*?)(?= \S+?=|$)", line.strip()))


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a daemon's parent may not reap it at once)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop_by_pid_file(pid_file: Path, timeout: float = 30) -> None:
    """SIGTERM the daemon named in its pid file and wait for it to exit (SIGKILL if it will not)."""
    pid = read_pid(pid_file)
    if pid is None or not pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5  # a killed process is gone at once
        time.sleep(0.1)


def munge_works() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        check = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return cred.returncode == 0 and check.returncode == 0


def start_munged() -> None:
    """Start munged as the `munge` user, as the Debian service would (there is no systemd here)."""
    run_dir = MUNGE_PID_FILE.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    result = subprocess.run(
        ["runuser", "-u", "munge", "--", shutil.which("munged")], capture_output=True, text=True, timeout=30
    )
    deadline = time.monotonic() + 10
    while not munge_works():
        if result.returncode != 0 or time.monotonic() > deadline:
            stop_by_pid_file(MUNGE_PID_FILE)
            raise SlurmUnavailable(f"munged did not start (rc {result.returncode}): {result.stderr.strip()}")
        time.sleep(0.2)


def node_resources() -> tuple[int, int]:
    """CPUs and a RealMemory below what `slurmd -C` measured, so the node is never drained for it."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
    fields = parse_record(out.splitlines()[0]) if out else {}
    try:
        return int(fields["CPUs"]), int(int(fields["RealMemory"]) * 0.9)
    except (KeyError, ValueError) as error:
        raise SlurmUnavailable(f"cannot read the node from `slurmd -C`: {out!r}") from error


def slurm_conf(root: Path, host: str, cpus: int, memory: int) -> str:
    ctld_port, slurmd_port = free_ports(2)
    return f"""\
ClusterName=test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Schedule a batch job when it is submitted, not up to 3 s later (the default batch_sched_delay).
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
JobRequeue=1
MpiDefault=none
# Without accounting, `scontrol show job` forgets a finished job after MinJobAge seconds.
MinJobAge=3600
# SIGTERM-to-SIGKILL grace on cancel; short, so teardown does not wait 30 s for a stubborn job.
KillWait=5
NodeName={host} CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """`with SlurmCluster() as cluster:` a one-node cluster in a temp dir, stopped and removed after."""

    def __init__(self, start_timeout: float = 60) -> None:
        self.start_timeout = start_timeout
        self.root: Path | None = None
        self.env: dict[str, str] = {}
        self.started_munged = False

    def __enter__(self) -> SlurmCluster:
        missing = [c for c in COMMANDS if shutil.which(c) is None]
        if missing:
            raise SlurmUnavailable(f"missing {' '.join(missing)} (make slurm-tools installs slurm-wlm munge)")
        if os.geteuid() != 0:
            raise SlurmUnavailable("slurmd must run as root to start jobs")
        self.root = Path(tempfile.mkdtemp(prefix="slurm-"))  # short: slurmd puts sockets in it
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _start(self) -> None:
        if not munge_works():
            start_munged()
            self.started_munged = True
        for sub in ("state", "spool"):
            (self.root / sub).mkdir()
        conf = self.root / "slurm.conf"
        conf.write_text(slurm_conf(self.root, socket.gethostname(), *node_resources()))
        # A job's own SLURM_* variables (tests run inside a job) would mislead sbatch and srun.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        self.env["SLURM_CONF"] = str(conf)
        for daemon in ("slurmctld", "slurmd"):
            result = subprocess.run([daemon], env=self.env, capture_output=True, text=True, timeout=60)
            if result.returncode != 0:
                raise SlurmUnavailable(
                    f"{daemon} did not start (rc {result.returncode}): {result.stderr.strip()}\n{self.logs()}"
                )
        self._wait_idle()

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            out = self.run("sinfo", "--noheader", "--Node", "--format=%T", check=False).stdout.strip()
            if out == "idle":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the node is not idle after {self.start_timeout:.0f} s (sinfo: {out!r})\n{self.logs()}"
                )
            time.sleep(0.3)

    def logs(self, lines: int = 30) -> str:
        """The tail of both daemons' logs, for failure messages."""
        return "\n".join(
            f"--- {name} (last {lines} lines) ---\n{tail(self.root / name, lines)}"
            for name in ("slurmctld.log", "slurmd.log")
        )

    def run(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        result = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60, **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed (rc {result.returncode}): {result.stderr.strip()}")
        return result

    def sbatch(
        self,
        script_path: str | os.PathLike,
        *args: str,
        cwd: str | os.PathLike,
        env_extra: dict[str, str] | None = None,
    ) -> str:
        """Submit a batch script from `cwd` (its default output dir); returns the job id."""
        env = {**self.env, **(env_extra or {})}
        result = subprocess.run(
            ["sbatch", "--parsable", *args, str(script_path)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"sbatch {script_path} failed (rc {result.returncode}): {result.stderr}")
        return result.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol -o show job` as a dict: JobState, Reason, Restarts (22.05's name), ExitCode, StdOut..."""
        return parse_record(self.run("scontrol", "-o", "show", "job", str(job_id)).stdout)

    def wait_for(self, job_id: str, states: Iterable[str], timeout: float = 30) -> dict[str, str]:
        """Poll until the job's state is one of `states`; fail at once if it ends in another."""
        states = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            state = job.get("JobState")
            if state in states:
                return job
            if state in FINAL_STATES:
                self._fail(job, f"ended {state}, not {sorted(states)}")
            if time.monotonic() > deadline:
                self._fail(job, f"still {state} after {timeout:.0f} s, not {sorted(states)}")
            time.sleep(0.2)

    def wait_for_output(self, job_id: str, text: str, timeout: float = 30) -> str:
        """Poll the job's output file until it holds `text` (say, a line printed once traps are set)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            path = Path(job.get("StdOut", ""))
            out = path.read_text(errors="replace") if path.is_file() else ""
            if text in out:
                return out
            if job.get("JobState") in FINAL_STATES or time.monotonic() > deadline:
                self._fail(job, f"is {job.get('JobState')} and its output lacks {text!r}")
            time.sleep(0.2)

    def _fail(self, job: dict[str, str], why: str) -> NoReturn:
        pytest.fail(
            f"job {job.get('JobId')} {why}: {job}\n"
            f"--- its output ---\n{tail(Path(job.get('StdOut', '')))}\n{self.logs(10)}"
        )

    def signal_batch(self, job_id: str, sig: str) -> None:
        """Send `sig` to the batch script's shell only (as `--signal=B:` does), not to its steps."""
        self.run("scancel", f"--signal={sig}", "--batch", str(job_id))

    def start_now(self, job_id: str) -> None:
        """Start a requeued job now rather than when Slurm's hold ends (BeginTime, about 2 minutes)."""
        # PENDING (not COMPLETING) means slurmd has ended the last run and revoked its credential.
        # Revocation has one-second resolution, so a relaunch within the same second is refused
        # ("Job credential revoked") and the job FAILS: move into the next second first.
        self.wait_for(job_id, {"PENDING"})
        time.sleep(1.05 - time.time() % 1)
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def cancel_all(self, timeout: float = 30) -> None:
        """Cancel every job and wait until none runs, so that no job step outlives slurmd."""
        self.run("scancel", f"--user={pwd.getpwuid(os.getuid()).pw_name}", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run(
                "squeue", "--noheader", "--states=CONFIGURING,RUNNING,COMPLETING", check=False
            ).stdout
            if not out.strip():
                return
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancel jobs, stop the daemons this cluster started (slurmd first), remove the temp dir."""
        if self.root is not None:
            ctld = read_pid(self.root / "slurmctld.pid")
            if ctld is not None and pid_alive(ctld):  # scancel would wait for a dead controller
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    self.cancel_all()
            for daemon in ("slurmd", "slurmctld"):
                stop_by_pid_file(self.root / f"{daemon}.pid")
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        if self.started_munged:
            stop_by_pid_file(MUNGE_PID_FILE)
            self.started_munged = False


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """One cluster for the session; skips where Slurm cannot run, fails where it runs but breaks."""
    try:
        cluster = SlurmCluster().__enter__()
    except SlurmUnavailable as reason:
        pytest.skip(f"no SLURM cluster here: {reason}")
    try:
        yield cluster
    finally:
        cluster.__exit__(None, None, None)
