"""The SLURM harness against real daemons, and the Slurm behaviour the generated sbatch script relies
on: multi-task steps, and preemption (USR1 to the batch shell, SIGTERM forwarded to the step,
requeue, a second run that sees SLURM_RESTART_COUNT=1 and appends to the same output file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .slurm import SlurmCluster

pytestmark = pytest.mark.slow

TWO_TASKS = """\
#!/bin/bash
#SBATCH --job-name=two-tasks
#SBATCH --ntasks=2
#SBATCH --output=%x-%j.out
srun bash -c 'echo "task $SLURM_PROCID of $SLURM_NTASKS"'
"""

# A stand-in for train.sbatch. The step records each signal it receives in step-signals; it
# announces itself only once its traps are set, so the test signals no earlier than that.
PREEMPTIBLE = """\
#!/bin/bash
#SBATCH --job-name=preemptible
#SBATCH --ntasks=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@60
#SBATCH --output=%x-%j.out
echo "run restart_count=${SLURM_RESTART_COUNT:-0}"
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then exit 0; fi
on_usr1() {
  echo "batch shell got USR1"
  FORWARD
  wait "$step"; echo "srun exited $?"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
}
trap on_usr1 USR1
srun --ntasks=1 bash -c '
  trap "echo TERM >> step-signals; exit 143" TERM
  trap "echo USR1 >> step-signals" USR1
  echo "step started"
  while true; do sleep 0.2; done' &
step=$!
wait "$step"  # the builtin returns when a trapped signal arrives; a foreground srun would not
"""


def test_two_tasks_run(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = tmp_path / "two.sbatch"
    script.write_text(TWO_TASKS)
    job = slurm_cluster.wait_for(slurm_cluster.sbatch(script, cwd=tmp_path), {"COMPLETED"})
    out = Path(job["StdOut"]).read_text()
    assert "task 0 of 2" in out and "task 1 of 2" in out, out


@pytest.mark.parametrize(
    ("forward", "step_gets_term"),
    [
        pytest.param('scancel --signal=TERM "$SLURM_JOB_ID.0"', True, id="scancel-step"),
        pytest.param('scancel --signal=TERM "$SLURM_JOB_ID"', True, id="scancel-job"),
        # srun takes SIGTERM as "abort the step": it SIGKILLs the tasks, whose traps never run.
        pytest.param('kill -TERM "$step"', False, id="kill-srun"),
    ],
)
def test_preempted_job_is_requeued_and_reruns(
    slurm_cluster: SlurmCluster, tmp_path: Path, forward: str, step_gets_term: bool
) -> None:
    script = tmp_path / "preemptible.sbatch"
    script.write_text(PREEMPTIBLE.replace("FORWARD", forward))
    job_id = slurm_cluster.sbatch(script, cwd=tmp_path)
    slurm_cluster.wait_for_output(job_id, "step started")

    slurm_cluster.signal_batch(job_id, "USR1")  # what --signal=B:USR1@60 sends before the limit
    pending = slurm_cluster.wait_for(job_id, {"PENDING"})
    assert pending["Restarts"] == "1", pending
    slurm_cluster.start_now(job_id)
    job = slurm_cluster.wait_for(job_id, {"COMPLETED"})

    out = Path(job["StdOut"]).read_text()
    # --open-mode=append keeps the first run's output; the second run knows it is a restart.
    assert "run restart_count=0" in out and "run restart_count=1" in out, out
    assert "batch shell got USR1" in out, out
    signals = tmp_path / "step-signals"
    if step_gets_term:
        # B: in --signal and --batch in scancel reach the batch shell only, never the step.
        assert signals.read_text() == "TERM\n", out
        assert "srun exited 143" in out, out
    else:
        assert not signals.exists(), signals.read_text()
        assert "srun: forcing job termination" in out and "srun exited 137" in out, out
