"""Experiment tracking, read back with the backends' own readers: TensorBoard's event accumulator and
MLflow's client (on a SQLite store in a scratch directory)."""

import importlib.util
import json
import signal
import subprocess
from pathlib import Path
from typing import ClassVar

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from {{ cookiecutter.package_name }}.errors import UsageError, UserError
from {{ cookiecutter.package_name }}.train import train
from {{ cookiecutter.package_name }}.training import tracking
from {{ cookiecutter.package_name }}.training.tracking import TRACKERS, TensorBoard, Tracker

from .conftest import TASKS, task_config
from .test_reproducibility import PROJECT_ROOT, command, run_env, start, wait_for_epoch

EPOCH_TAGS = {"loss/train", "accuracy/train", "loss/val", "accuracy/val", "lr"}


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_every_epoch_the_config_and_the_results(trained):
    logged, history = scalars(trained.run_dir), trained.metrics["history"]
    assert EPOCH_TAGS | {"final/test_accuracy", "final/test_loss"} == logged.keys()
    for row in history:
        for key, value in row.items():
            if key != "epoch":
                split, _, name = key.partition("_")
                tag = f"{name}/{split}" if name else key
                assert logged[tag][row["epoch"]] == pytest.approx(value, rel=1e-6), tag
    assert logged["final/test_accuracy"][0] == pytest.approx(trained.metrics["test_accuracy"])
    events = EventAccumulator(str(trained.run_dir))
    events.Reload()
    start_info = metadata.parse_session_start_info_plugin_data(
        events.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG]
    )
    params = {key: value.ListFields()[0][1] for key, value in start_info.hparams.items()}
    assert params["optim.epochs"] == 2 and params["task"] == trained.metrics["task"]
    assert params["output.runs_dir"] == str(trained.run_dir.parent)


def test_a_resumed_run_shows_each_epoch_once(tmp_path):
    """Epoch 3 was logged, then the run stopped and resumed from its epoch-1 checkpoint: the second
    session's epochs 2 and 3 replace the first's."""
    first = TensorBoard(tmp_path, 0)
    for epoch in (1, 2, 3):
        first.log_epoch(epoch, {"train_loss": float(epoch)})
    first.close(finished=False)
    second = TensorBoard(tmp_path, 1)
    for epoch in (2, 3):
        second.log_epoch(epoch, {"train_loss": 10.0 * epoch})
    second.close(finished=True)
    assert scalars(tmp_path)["loss/train"] == {1: 1.0, 2: 20.0, 3: 30.0}


def test_tracking_none_writes_no_event_files(tmp_path):
    result = train(task_config(TASKS[0], tmp_path, "optim.epochs=1", "tracking=none"), progress=False)
    assert not list(result.run_dir.glob("events.out.tfevents.*"))


@pytest.mark.parametrize("spec", ["wandb", "tensorboard,", "", "none,mlflow"])
def test_an_unknown_backend_is_a_usage_error(spec):
    with pytest.raises(UsageError, match="name one or more of tensorboard, mlflow, none"):
        tracking.backends(spec)


def test_a_backend_this_environment_lacks_is_named_before_training(monkeypatch):
    monkeypatch.setitem(TRACKERS, "absent", (Tracker, "no_such_tracking_module", "make sync EXTRAS=absent"))
    expected = r"tracking=absent needs no_such_tracking_module, which this environment lacks: `make sync E"
    with pytest.raises(UserError, match=expected):
        tracking.check_installed("tensorboard,absent")


class Recorder(Tracker):
    """A backend added the documented way: a Tracker subclass in TRACKERS."""

    calls: ClassVar[list[tuple]] = []

    def __init__(self, run_dir: Path, resume_epoch: int) -> None:
        self.calls.append(("open", run_dir.name, resume_epoch))

    def start(self, params, resumed):
        self.calls.append(("start", params["task"], resumed))

    def log_epoch(self, epoch, metrics):
        self.calls.append(("epoch", epoch, sorted(metrics)))

    def log_final(self, metrics, model):
        self.calls.append(("final", sorted(metrics), model.name))

    def close(self, finished):
        self.calls.append(("close", finished))


class Broken(Tracker):
    def log_epoch(self, epoch, metrics):
        raise ConnectionError("tracking server unreachable")


def test_a_new_backend_plugs_in_and_a_failing_one_never_stops_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(TRACKERS, "recorder", (Recorder, "json", "requirements/prod.txt"))
    monkeypatch.setitem(TRACKERS, "broken", (Broken, "json", "requirements/prod.txt"))
    Recorder.calls = []
    config = task_config(TASKS[0], tmp_path, "optim.epochs=2", "tracking=broken,recorder")
    result = train(config, progress=False)
    metrics = ["lr", "train_accuracy", "train_loss", "val_accuracy", "val_loss"]
    assert Recorder.calls == [
        ("open", result.run_dir.name, 0),
        ("start", TASKS[0], False),
        ("epoch", 1, metrics),
        ("epoch", 2, metrics),
        ("final", ["test_accuracy", "test_loss"], "checkpoint.pt"),
        ("close", True),
    ]
    err = capsys.readouterr().err
    assert err.count("warning: tracking to broken failed (tracking server unreachable)") == 1
    assert result.model_path.is_file()


def mlflow_run(store: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


# MLflow is an optional extra: `make sync EXTRAS=mlflow` installs it, and with it these tests run.
needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None,
    reason="the mlflow extra is not installed (make sync EXTRAS=mlflow)",
)


@pytest.mark.slow
@needs_mlflow
def test_mlflow_holds_the_params_metrics_and_model_of_a_resumed_run(tmp_path):
    """SIGTERM after the first epoch, then RESUME=auto: one MLflow run, finished, with every epoch,
    the test metrics and the promoted model as its artifact."""
    store, runs = tmp_path / "mlruns", tmp_path / "runs"
    env = {**run_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db"}
    args = (f"task={TASKS[0]}", "optim.epochs=3", "tracking=mlflow,tensorboard", "device=cpu")
    first = start(runs, *args, env=env)
    wait_for_epoch(runs, first, 1)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 128 + signal.SIGTERM
    client, run = mlflow_run(store)
    assert run.info.status == "KILLED"
    resumed = subprocess.run(
        command(runs, "--resume", "auto", *args), cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    client, run = mlflow_run(store)
    (run_dir,) = [path for path in runs.iterdir() if path.is_dir()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.params["optim.epochs"] == "3" and run.data.params["task"] == TASKS[0]
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_accuracy"))
    assert history == [(row["epoch"], pytest.approx(row["val_accuracy"])) for row in metrics["history"]]
    model = Path(client.download_artifacts(run.info.run_id, "model/checkpoint.pt", str(tmp_path)))
    assert model.read_bytes() == (run_dir / "checkpoint.pt").read_bytes()
    assert set(scalars(run_dir)["loss/train"]) == {1, 2, 3}
