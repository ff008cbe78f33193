"""Training a task, as the steps of a run: set up, start (or resume), train epoch by epoch, finish.

Seeded and deterministic; resumable at any batch. Checkpoints are written atomically every
`output.checkpoint_every` epochs and whenever SIGINT or SIGTERM stops the run; a resumed run
restores the weights, optimizer, scheduler, every random state and the position in the epoch, so
it ends with the same weights, bit for bit, as one that never stopped (on the CPU).
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import Config, config_from_dict, parse_override
from .device import resolve_device
from .errors import UsageError, UserError
from .reproducibility import (
    data_fingerprint,
    environment,
    flatten,
    restore_rng_state,
    seed_everything,
    weights_sha256,
)
from .tasks import build_model, get_task
from .training.loop import Accumulator, make_loader, score, train_batches
from .training.progress import Progress
from .training.runs import Resumable, RunDir, now
from .training.state import Setup, TrainingState, model_payload


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    model_path: Path
    metrics: dict


class Interrupted(UserError):
    """SIGINT/SIGTERM stopped training after a checkpoint was saved."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"training stopped by {name}; checkpoint {checkpoint}; resume with `make train RESUME=auto`"
        )
        self.exit_code = 128 + signum


def train(config: Config, *, progress: bool = True, resume: Resumable | None = None) -> TrainResult:
    """Train from scratch, or continue the run a `resume` checkpoint belongs to."""
    started = time.perf_counter()
    parts = setup(config)
    run, state = start(parts, resume)
    per_epoch = len(parts.loaders["train"])
    initial = state.epoch * per_epoch + state.batch
    with Progress(config.optim.epochs * per_epoch, initial, show=progress) as report:
        while state.epoch < config.optim.epochs:
            totals = fit_epoch(parts, state, report)
            if report.stop_signal is not None:
                raise Interrupted(report.stop_signal, state.save(run, parts, totals))
            end_epoch(parts, state, totals, run)
            report.epoch_done(state.epoch, config.optim.epochs, state.history[-1])
    return finish(parts, state, run, started)


def setup(config: Config) -> Setup:
    """The task's data and model, the optimizer and the schedule, on the chosen device."""
    device = resolve_device(config.device)
    seed_everything(config.seed, config.deterministic)
    task = get_task(config.task)
    splits = task.load_splits(config.seed, config.data.val_fraction, config.data.test_fraction)
    loaders = {
        name: make_loader(
            getattr(splits, name),
            config.data.batch_size,
            shuffle=name == "train",
            seed=config.seed,
            num_workers=config.data.num_workers,
        )
        for name in ("train", "val", "test")
    }
    preprocessing = task.fit_preprocessing(splits.train)
    model = build_model(task, config.model, preprocessing).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.optim.epochs)
    return Setup(config, task, splits, loaders, preprocessing, model, optimizer, scheduler, device)


def start(parts: Setup, resume: Resumable | None) -> tuple[RunDir, TrainingState]:
    """A new run directory with its manifest, or the resumed run with its state restored."""
    config = parts.config
    if resume is None:
        run, state = RunDir.create(config.output.runs_dir), TrainingState()
        split_arrays = [
            a for s in (parts.splits.train, parts.splits.val, parts.splits.test) for a in (s.inputs, s.labels)
        ]
        manifest = {
            "run_id": run.name,
            "status": "running",
            "started": now(),
            "seed": config.seed,
            "deterministic": config.deterministic,
            "config": config.to_dict(),
            "data_sha256": data_fingerprint(*split_arrays),
            "environment": environment(Path.cwd()),
            "resumed": [],
        }
    else:
        run, state = resume.run, TrainingState.restore(parts, resume.payload)
        manifest = run.read_manifest()
        manifest["resumed"].append(
            {"at": now(), "from": resume.checkpoint.name, "environment": environment(Path.cwd())}
        )
        print(f"resuming {resume.checkpoint} (epoch {state.epoch + 1}, batch {state.batch})", file=sys.stderr)
    run.write_config(config.to_dict())
    run.write_manifest(manifest)
    return run, state


def fit_epoch(parts: Setup, state: TrainingState, report: Progress) -> Accumulator:
    """Train the rest of the current epoch (all of it, unless resumed mid-way or stopped)."""
    loader = parts.loaders["train"]
    if state.loader_rng is not None:  # the epoch's data order, as it was when the epoch began
        loader.generator.set_state(state.loader_rng)
    state.loader_rng = loader.generator.get_state()
    batches = iter(loader)
    for _ in range(state.batch):
        next(batches)
    if state.rng is not None:  # resumed: dropout and friends continue exactly where they stopped
        restore_rng_state(state.rng)
        state.rng = None
    totals = Accumulator(parts.device, state.totals)
    state.batch += train_batches(parts.model, batches, parts.optimizer, parts.device, totals, report.step)
    return totals


def end_epoch(parts: Setup, state: TrainingState, totals: Accumulator, run: RunDir) -> None:
    """Validate, step the schedule, record the epoch and checkpoint it when it is due."""
    config, train_score = parts.config, totals.score()
    val = score(parts.model, parts.loaders["val"], parts.device)
    parts.scheduler.step()
    state.epoch, state.batch, state.totals = state.epoch + 1, 0, (0.0, 0, 0)
    state.loader_rng = parts.loaders["train"].generator.get_state()
    state.history.append(
        {
            "epoch": state.epoch,
            "train_loss": train_score.loss,
            "train_accuracy": train_score.accuracy,
            "val_loss": val.loss,
            "val_accuracy": val.accuracy,
        }
    )
    if state.epoch % config.output.checkpoint_every == 0 or state.epoch == config.optim.epochs:
        state.save(run, parts, Accumulator(parts.device))


def finish(parts: Setup, state: TrainingState, run: RunDir, started: float) -> TrainResult:
    """Score the test split, write the run's results and promote its model."""
    test = score(parts.model, parts.loaders["test"], parts.device)
    summary = {
        "task": parts.config.task,
        "test_accuracy": test.accuracy,
        "test_loss": test.loss,
        "val_accuracy": state.history[-1]["val_accuracy"],
        "train_accuracy": state.history[-1]["train_accuracy"],
        "epochs": parts.config.optim.epochs,
        "device": str(parts.device),
        "seconds": round(time.perf_counter() - started, 2),
        "weights_sha256": weights_sha256(parts.model.state_dict()),
    }
    model_path = Path(parts.config.output.model_path)
    run.finish(model_payload(parts, metrics=summary), {**summary, "history": state.history}, model_path)
    return TrainResult(run_dir=run.path, model_path=model_path, metrics={**summary, "history": state.history})


def resumed_config(requested: Config, overrides: list[str], recorded: dict) -> Config:
    """A resumed run keeps its own config. Overrides that repeat it are fine (the first command plus
    RESUME=auto); one that contradicts it is refused, naming the key and both values."""
    wanted, own = flatten(requested.to_dict()), flatten(recorded)
    for text in overrides:
        for key in flatten(parse_override(text)):
            if key != "output.runs_dir" and wanted.get(key) != own.get(key):  # runs_dir says where to look
                raise UsageError(
                    f"{key}={wanted.get(key)} differs from the resumed run's {key}={own.get(key)}; "
                    "drop it to resume, or start a new run without RESUME"
                )
    return config_from_dict(recorded)
