"""Experiment tracking: what a run reports, through one small interface (`Tracker`), to TensorBoard
(event files in the run directory; `make tensorboard`), MLflow (a local SQLite store) or both.

Rank 0 alone tracks. To add a backend (Weights & Biases, say), write a Tracker subclass and add it
to TRACKERS under the name `tracking=` will use; the training loop does not change.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import UsageError, UserError

EXPERIMENT = __package__.split(".")[0]  # MLflow's experiment: the package, so one per project
MLFLOW_STORE = "mlruns"  # under the project: mlflow.db and artifacts/, unless MLFLOW_TRACKING_URI says


class Tracker:
    """One backend. Every method may be left as is; `close` runs whatever happened before it."""

    def __init__(self, run_dir: Path, resume_epoch: int) -> None:
        """For the run in `run_dir`; `resume_epoch`: the epochs it had trained (0: a new run)."""
        self.run_dir = run_dir

    def start(self, params: dict[str, Any], resumed: bool) -> None:
        """The run's flattened config, before the first epoch (again when it is resumed)."""

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Losses, accuracies and the learning rate of an epoch (1-based)."""

    def log_final(self, metrics: dict[str, float], model: Path) -> None:
        """The test metrics once training is done, and the run's final checkpoint."""

    def close(self, finished: bool) -> None:
        """Flush; `finished` is False when the run stopped (a signal, an error) and may resume."""


def hparam(value: Any) -> bool | int | float | str:
    """TensorBoard's and MLflow's parameters take scalars; anything else goes as its text."""
    return value if isinstance(value, bool | int | float | str) else str(value)


class TensorBoard(Tracker):
    """Event files in the run directory: scalars per epoch, the config as hyperparameters."""

    def __init__(self, run_dir: Path, resume_epoch: int) -> None:
        from tensorboardX import SummaryWriter

        # A resumed run re-trains the epochs after its checkpoint: purge what a stopped session
        # logged for them, so each epoch's point appears once.
        purge = resume_epoch + 1 if resume_epoch else None
        # Files are named by the second they were opened, and read in name order: the suffix keeps
        # a session resumed within the same second from overwriting the last one, and after it.
        suffix = f".{time.time_ns()}"
        self.writer = SummaryWriter(str(run_dir), purge_step=purge, flush_secs=30, filename_suffix=suffix)
        self.params: dict[str, Any] = {}

    def start(self, params: dict[str, Any], resumed: bool) -> None:
        self.params = {key: hparam(value) for key, value in params.items()}

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            split, _, name = key.partition("_")  # train_loss -> loss/train; lr stays lr
            self.writer.add_scalar(f"{name}/{split}" if name else key, value, epoch)

    def log_final(self, metrics: dict[str, float], model: Path) -> None:
        from tensorboardX.summary import hparams

        tagged = {f"final/{key}": value for key, value in metrics.items()}
        for summary in hparams(self.params, tagged):  # the HParams tab: config beside results
            self.writer.file_writer.add_summary(summary)
        for tag, value in tagged.items():
            self.writer.add_scalar(tag, value)

    def close(self, finished: bool) -> None:
        self.writer.close()


class MLflow(Tracker):
    """A run per training run (found again by its id on resume), with params, metrics per epoch,
    the test metrics and the final checkpoint as an artifact."""

    def __init__(self, run_dir: Path, resume_epoch: int) -> None:
        from mlflow.entities import RunStatus
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # schema migrations and store notices are not run output
            logging.getLogger(name).setLevel(logging.WARNING)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{MLFLOW_STORE}/mlflow.db"
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client, self.status = MlflowClient(uri), RunStatus
        self.run_id = self.find_or_create(run_dir, uri)

    def find_or_create(self, run_dir: Path, uri: str) -> str:
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            artifacts = None
            if uri.startswith("sqlite:///"):  # artifacts beside the database, not in the cwd
                artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
            experiment_id = self.client.create_experiment(EXPERIMENT, artifact_location=artifacts)
        else:
            experiment_id = experiment.experiment_id
        query = f"tags.run_id = '{run_dir.name}'"
        found = self.client.search_runs([experiment_id], filter_string=query, max_results=1)
        if found:
            self.client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        tags = {"run_id": run_dir.name, "run_dir": str(run_dir.resolve())}
        return self.client.create_run(experiment_id, run_name=run_dir.name, tags=tags).info.run_id

    def start(self, params: dict[str, Any], resumed: bool) -> None:
        if not resumed:  # a resumed run may change precision or compile; the first values stand
            from mlflow.entities import Param

            batch = [Param(key, str(hparam(value))) for key, value in params.items()]
            self.client.log_batch(self.run_id, params=batch)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.log_metrics(metrics, epoch)

    def log_final(self, metrics: dict[str, float], model: Path) -> None:
        self.log_metrics(metrics, 0)
        self.client.log_artifact(self.run_id, str(model), artifact_path="model")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(key, float(value), stamp, step) for key, value in metrics.items()]
        )

    def close(self, finished: bool) -> None:
        status = self.status.FINISHED if finished else self.status.KILLED
        self.client.set_terminated(self.run_id, self.status.to_string(status))


# name -> (the backend, the module it needs, the command that installs it: MLflow is an optional extra)
TRACKERS: dict[str, tuple[type[Tracker], str, str]] = {
    "tensorboard": (TensorBoard, "tensorboardX", "make sync"),
    "mlflow": (MLflow, "mlflow", "make sync EXTRAS=mlflow"),
}


def backends(spec: str) -> list[str]:
    """`tensorboard`, `mlflow`, `tensorboard,mlflow` or `none`: the backends a run logs to."""
    names = [name.strip() for name in spec.split(",")]
    if names == ["none"]:
        return []
    if any(name not in TRACKERS for name in names):
        choices = ", ".join([*TRACKERS, "none"])
        raise UsageError(f"tracking={spec!r}: name one or more of {choices}, separated by commas")
    return names


def check_installed(spec: str) -> None:
    """Before training starts: each backend's package is importable (the runtime image, say, has
    only the runtime lock)."""
    for name in backends(spec):
        _, module, install = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(
                f"tracking={name} needs {module}, which this environment lacks: `{install}` installs it "
                "(the environment keeps it), or train with tracking=none"
            )


class Tracking:
    """The run's backends as one: a backend that fails mid-run is reported once and dropped, so a
    tracking server's hiccup never costs the training."""

    def __init__(self, trackers: dict[str, Tracker]) -> None:
        self.trackers = trackers
        self.seconds = 0.0  # spent in the backends' calls: what tracking costs the training

    def call(self, method: str, *args: Any) -> None:
        start = time.perf_counter()
        for name, tracker in list(self.trackers.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as err:  # any backend failure: warn, keep training
                print(f"warning: tracking to {name} failed ({err}); it is off for this run", file=sys.stderr)
                del self.trackers[name]
        self.seconds += time.perf_counter() - start


@contextmanager
def tracking(spec: str, run_dir: Path, resume_epoch: int, active: bool) -> Iterator[Tracking]:
    """The run's trackers (none unless `active`: rank 0), closed when the block ends; a run that
    ends with an exception is marked stopped."""
    names = backends(spec) if active else []
    group = Tracking({name: TRACKERS[name][0](run_dir, resume_epoch) for name in names})
    finished = False
    try:
        yield group
        finished = True
    finally:
        group.call("close", finished)
