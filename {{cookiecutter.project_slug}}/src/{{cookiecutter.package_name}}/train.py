"""Training a task, as the steps of a run: set up, start (or resume), train epoch by epoch, finish.

Seeded and deterministic; resumable at any batch; one process or many under torchrun (each rank
trains on its share of every batch, DDP averages the gradients, rank 0 alone writes the run).
Checkpoints are written atomically every `output.checkpoint_every` epochs and whenever SIGINT or
SIGTERM stops the run; a resumed run restores the weights, optimizer, scheduler, every rank's
random states and the position in the epoch, so it ends with the same weights, bit for bit, as one
that never stopped (on the CPU, with the same number of processes).
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch

from .config import Config, config_from_dict, merge, parse_override
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
from .training import distributed
from .training.distributed import Peers, any_rank, from_main
from .training.loop import Accumulator, Precision, make_loader, score, train_batches
from .training.progress import Progress
from .training.runs import (
    Promotion,
    Resumable,
    RunDir,
    continue_launch,
    find_resumable,
    now,
    read_training_checkpoint,
    run_of_launch,
)
from .training.state import Setup, TrainingState, model_payload
from .training.tracking import check_installed, tracking


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    model_path: Path
    metrics: dict
    promotion: Promotion  # promoted to model_path, or superseded by a training started later


class Interrupted(UserError):
    """SIGINT/SIGTERM stopped training after a checkpoint was saved."""

    shared = True

    def __init__(self, signum: int, checkpoint: Path, world_size: int) -> None:
        name, nproc = signal.Signals(signum).name, f" NPROC={world_size}" if world_size > 1 else ""
        super().__init__(
            f"training stopped by {name}; checkpoint {checkpoint}; "
            f"resume with `make train RESUME=auto{nproc}`"
        )
        self.exit_code = 128 + signum


class Unfinished(UserError):
    """A second signal stopped a run after its last epoch, before its model was promoted."""

    shared = True

    def __init__(self, run: RunDir, epochs: int) -> None:
        super().__init__(
            f"stopped while finishing run {run.name}: all {epochs} epochs are trained and checkpointed, "
            "its model is not promoted; `make train RESUME=auto` finishes it"
        )
        self.exit_code = 130


def train(
    config: Config, peers: Peers | None = None, *, progress: bool = True, resume: Resumable | None = None
) -> TrainResult:
    """Train from scratch, or continue the run `resume` belongs to. Every rank of a group calls it."""
    started, train_seconds = time.time(), 0.0  # wall clock: also when this session began
    parts = setup(config, peers or Peers.alone(config.device))
    run, state = start(parts, resume)
    per_epoch = len(parts.loaders["train"])
    initial = state.epoch * per_epoch + state.batch
    # In a group, ranks agree (a collective) on the batch to stop at.
    agree = partial(any_rank, device=parts.device) if distributed.active() else None
    with (
        Progress(config.optim.epochs * per_epoch, initial, progress and parts.peers.main, agree) as report,
        tracking(config.tracking, run.path, state.epoch, parts.peers.main) as tracker,
    ):
        tracker.call("start", flatten(config.to_dict()), resume is not None)
        while state.epoch < config.optim.epochs:
            tick = time.perf_counter()
            totals = fit_epoch(parts, state, report)
            train_seconds += time.perf_counter() - tick
            if report.stopping:
                raise Interrupted(report.stop_signal, state.save(run, parts, totals), parts.peers.world_size)
            end_epoch(parts, state, totals, run)
            epoch_metrics = {key: value for key, value in state.history[-1].items() if key != "epoch"}
            tracker.call("log_epoch", state.epoch, epoch_metrics)
            report.epoch_done(state.epoch, config.optim.epochs, state.history[-1])
        report.finishing()
        try:
            result = finish(parts, state, run, started, (train_seconds, tracker.seconds))
        except KeyboardInterrupt:
            raise Unfinished(run, config.optim.epochs) from None
        final = {key: result.metrics[key] for key in ("test_accuracy", "test_loss")}
        tracker.call("log_final", final, run.path / "checkpoint.pt")
        return result


def setup(config: Config, peers: Peers) -> Setup:
    """The task's data and model, the optimizer and the schedule, on this rank's device."""
    config.check_processes(peers.world_size)
    device, precision = peers.device, Precision(config.precision, peers.device)
    seed_everything(config.seed + peers.rank, config.deterministic)  # rank 0 initialises the weights
    task = get_task(config.task)
    splits = task.load_splits(config.seed, config.data.val_fraction, config.data.test_fraction)
    loaders = {
        name: make_loader(
            getattr(splits, name),
            config.data.batch_size,
            shuffle=name == "train",
            seed=config.seed,
            num_workers=config.data.num_workers,
            rank=peers.rank,
            world_size=peers.world_size,
        )
        for name in ("train", "val", "test")
    }
    preprocessing = task.fit_preprocessing(splits.train)
    model = build_model(task, config.model, preprocessing).to(device)
    network = distributed.wrap(model, device)
    if config.compile:
        network = compiled(network, device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.optim.epochs)
    return Setup(
        config,
        task,
        splits,
        loaders,
        preprocessing,
        model,
        network,
        optimizer,
        scheduler,
        precision,
        device,
        peers,
    )


def compiled(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """torch.compile, refused up front where it would fail at the first step instead."""
    compiler = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if compiler is None:
        raise UserError(
            f"compile=true needs a C compiler for {device.type} kernels; install gcc or set compile=false"
        )
    return torch.compile(network)


def start(parts: Setup, resume: Resumable | None) -> tuple[RunDir, TrainingState]:
    """A new run directory with its manifest, or the resumed run with its state restored.
    Rank 0 owns the directory; the other ranks learn its name and restore the same checkpoint."""
    config, peers = parts.config, parts.peers
    if resume is None:
        run = RunDir(from_main(RunDir.create(config.output.runs_dir).path if peers.main else None))
        state = TrainingState()
    else:
        run, state = resume.run, restored_state(parts, resume)
    if peers.main:
        manifest = new_manifest(parts, run) if resume is None else run.read_manifest()
        if resume is not None:
            where = resumed_position(resume, state, config.optim.epochs)
            print(f"resuming run {run.name} from {where}", file=sys.stderr)
            manifest["resumed"].append(
                {
                    "at": now(),
                    "from": resume.checkpoint.name if resume.payload else None,
                    "launch": distributed.launch_record(peers),
                    "environment": environment(Path.cwd()),
                }
            )
        run.write_config(config.to_dict())
        run.write_manifest(manifest)
    return run, state


def resumed_position(resume: Resumable, state: TrainingState, epochs: int) -> str:
    if not resume.payload:
        return "the start"
    if state.epoch >= epochs:
        return f"{resume.checkpoint.name} (all {epochs} epochs trained: scoring and promoting its model)"
    return f"{resume.checkpoint.name} (epoch {state.epoch + 1}, batch {state.batch})"


def restored_state(parts: Setup, resume: Resumable) -> TrainingState:
    """The checkpoint's state, or a fresh one for a run restarted before its first checkpoint."""
    if resume.payload is None:
        return TrainingState()
    written_by, world_size = resume.payload.get("world_size", 1), parts.peers.world_size
    if written_by != world_size:
        raise UserError(
            f"{resume.checkpoint} was written by {written_by} process(es), this run has {world_size}: "
            f"resume it with NPROC={written_by} (the data order depends on the number of processes)"
        )
    return TrainingState.restore(parts, resume.payload)


def new_manifest(parts: Setup, run: RunDir) -> dict:
    config, splits = parts.config, parts.splits
    split_arrays = [a for s in (splits.train, splits.val, splits.test) for a in (s.inputs, s.labels)]
    return {
        "run_id": run.name,
        "status": "running",
        "started": now(),
        "seed": config.seed,
        "deterministic": config.deterministic,
        "config": config.to_dict(),
        "data_sha256": data_fingerprint(*split_arrays),
        "launch": distributed.launch_record(parts.peers),
        "environment": environment(Path.cwd()),
        "resumed": [],
    }


def fit_epoch(parts: Setup, state: TrainingState, report: Progress) -> Accumulator:
    """Train the rest of the current epoch (all of it, unless resumed mid-way or stopped)."""
    loader = parts.loaders["train"]
    loader.sampler.set_epoch(state.epoch)  # the epoch's data order follows from the seed and the epoch
    batches = iter(loader)
    for _ in range(state.batch):
        next(batches)
    if state.rng is not None:  # resumed: dropout and friends continue exactly where they stopped
        restore_rng_state(state.rng)
        state.rng = None
    totals = Accumulator(parts.device, state.totals)
    state.batch += train_batches(
        parts.network, batches, parts.optimizer, parts.precision, totals, report.step
    )
    return totals


def end_epoch(parts: Setup, state: TrainingState, totals: Accumulator, run: RunDir) -> None:
    """Validate, step the schedule, record the epoch and checkpoint it when it is due."""
    config, train_score = parts.config, totals.score()
    distributed.share_buffers(parts.model)
    val = score(parts.model, parts.loaders["val"], parts.device, parts.precision)
    lr = parts.optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
    parts.scheduler.step()
    state.epoch, state.batch, state.totals = state.epoch + 1, 0, (0.0, 0, 0)
    state.history.append(
        {
            "epoch": state.epoch,
            "train_loss": train_score.loss,
            "train_accuracy": train_score.accuracy,
            "val_loss": val.loss,
            "val_accuracy": val.accuracy,
            "lr": lr,
        }
    )
    if state.epoch % config.output.checkpoint_every == 0 or state.epoch == config.optim.epochs:
        state.save(run, parts, Accumulator(parts.device))


def finish(
    parts: Setup, state: TrainingState, run: RunDir, started: float, spent: tuple[float, float]
) -> TrainResult:
    """Score the test split, write the run's results and promote its model (rank 0). `spent`: the
    seconds in training steps, and in tracking calls, of this session."""
    train_seconds, tracking_seconds = spent
    test = score(parts.model, parts.loaders["test"], parts.device, parts.precision)
    summary = {
        "task": parts.config.task,
        "test_accuracy": test.accuracy,
        "test_loss": test.loss,
        "val_accuracy": state.history[-1]["val_accuracy"],
        "train_accuracy": state.history[-1]["train_accuracy"],
        "epochs": parts.config.optim.epochs,
        "train_samples": len(parts.splits.train.labels),
        "device": str(parts.device),
        "processes": parts.peers.world_size,
        "precision": parts.config.precision,
        "seconds": round(time.time() - started, 2),
        "train_seconds": round(train_seconds, 3),
        "tracking_seconds": round(tracking_seconds, 4),
        "weights_sha256": weights_sha256(parts.model.state_dict()),
    }
    model_path, metrics = Path(parts.config.output.model_path), {**summary, "history": state.history}
    promotion = Promotion(False)
    if parts.peers.main:
        promotion = run.finish(model_payload(parts, metrics=summary), metrics, model_path, since=started)
    distributed.barrier()  # every rank returns once the model is promoted
    return TrainResult(run.path, model_path, metrics, promotion)


class Plan(NamedTuple):
    """How a training command starts, decided once (by rank 0) before any training."""

    config: Config
    run: Path | None = None  # a run to continue; None: a new run
    checkpoint: Path | None = None  # its checkpoint; None: from its start
    complete: bool = False  # a relaunch of a run that has already finished


def plan_start(config: Config, overrides: list[str], target: str | None) -> Plan:
    """RESUME's checkpoint; or, when torchrun restarted the workers or SLURM requeued the job, the
    run this launch began, from its newest good checkpoint; or else a new run."""
    config.check_outputs()  # an unwritable runs_dir or model_path fails now, not after training
    check_installed(config.tracking)  # so is a tracking backend this environment lacks
    runs_dir, launch = config.output.runs_dir, distributed.launch_id()
    if distributed.relaunched() and launch and (run := run_of_launch(runs_dir, launch)):
        if run.read_manifest().get("status") == "complete":
            return Plan(config, run.path, complete=True)
        resume = continue_launch(run)
    elif target:
        resume = find_resumable(runs_dir, target)
    else:
        return Plan(config)
    recorded = resume.payload["config"] if resume.payload else resume.run.read_manifest()["config"]
    return Plan(resumed_config(config, overrides, recorded), resume.run.path, resume.checkpoint)


def run_training(
    config: Config, overrides: list[str], target: str | None, progress: bool
) -> TrainResult | None:
    """The `train` command on every rank: join the group, agree on the plan, train. The result on
    rank 0; None on the other ranks, and for a relaunch whose run had already finished."""
    with distributed.process_group(config.device) as peers:
        plan = distributed.decide(peers, lambda: plan_start(config, overrides, target))
        if plan.complete:
            if peers.main:
                print(f"run {plan.run.name} of this launch is complete; nothing to do", file=sys.stderr)
            return None
        resume = None
        if plan.run is not None:
            payload = read_training_checkpoint(plan.checkpoint) if plan.checkpoint else None
            resume = Resumable(RunDir(plan.run), plan.checkpoint, payload)
        result = train(plan.config, peers, progress=progress, resume=resume)
        return result if peers.main else None


# Where and how a run trains and reports, not what it learns: a resumed run may change these.
ADJUSTABLE = ("output.runs_dir", "precision", "compile", "tracking")


def resumed_config(requested: Config, overrides: list[str], recorded: dict) -> Config:
    """A resumed run keeps its own config. Overrides that repeat it are fine (the first command plus
    RESUME=auto), and ADJUSTABLE keys may change (resuming on another GPU; the weights then
    differ from an uninterrupted run's); any other difference is refused, naming both values."""
    wanted, own = flatten(requested.to_dict()), flatten(recorded)
    adjusted = []
    for text in overrides:
        for key in flatten(parse_override(text)):
            if key in ADJUSTABLE:
                adjusted.append(text)
            elif wanted.get(key) != own.get(key):
                raise UsageError(
                    f"{key}={wanted.get(key)} differs from the resumed run's {key}={own.get(key)}; "
                    "drop it to resume, or start a new run without RESUME"
                )
    config = config_from_dict(recorded)
    for text in adjusted:
        merge(config, parse_override(text))
    config.validate()
    return config
