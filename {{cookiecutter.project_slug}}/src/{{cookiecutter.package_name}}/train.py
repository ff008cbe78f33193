"""The training loop: seeded and deterministic, one run directory per run, resumable at any batch.

A run writes `runs/<id>/` (config, manifest, metrics, curves, final checkpoint) and resumable
training checkpoints under `runs/<id>/checkpoints/`, atomically, every `output.checkpoint_every`
epochs and whenever SIGINT or SIGTERM stops it. Resuming restores the model, optimizer, scheduler,
every random state and the position in the epoch, so a resumed run ends with the same weights,
bit for bit, as one that never stopped (on the CPU).
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from .checkpoint import (
    atomic_write_bytes,
    latest_training_state,
    read_training_state,
    save_checkpoint,
    save_training_state,
)
from .config import Config, config_from_dict
from .data import load_splits, make_loader
from .device import resolve_device
from .errors import UserError
from .evaluate import score
from .model import build_model
from .plots import plot_history
from .reproducibility import (
    data_fingerprint,
    environment,
    restore_rng_state,
    rng_state,
    seed_everything,
    weights_sha256,
)


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


@dataclass
class Totals:
    """Running sums of one epoch, kept on the device until the epoch ends (one sync per epoch)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0

    @classmethod
    def zero(cls, device: torch.device) -> Totals:
        return cls(torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device))


def train_batches(
    model: torch.nn.Module,
    batches: Iterator,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    totals: Totals,
    on_batch: Callable[[int], object] | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Train on `batches` until they run out (True) or `stop()` says so after a batch (False)."""
    model.train()
    for inputs, targets in batches:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = model(inputs)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        totals.loss_sum += loss.detach() * len(targets)
        totals.correct += (logits.detach().argmax(dim=1) == targets).sum()
        totals.seen += len(targets)
        if on_batch is not None:
            on_batch(1)
        if stop():
            return False
    return True


def train_one_epoch(model, loader, optimizer, device, on_batch=None) -> tuple[float, float]:
    """One pass over `loader`: (mean loss, accuracy)."""
    totals = Totals.zero(device)
    train_batches(model, iter(loader), optimizer, device, totals, on_batch)
    return totals.loss_sum.item() / totals.seen, totals.correct.item() / totals.seen


def new_run_dir(runs_dir: Path) -> Path:
    """runs/<UTC timestamp>-<random suffix>: sorts by time, never collides."""
    run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True)
    return run_dir


def promote(checkpoint: Path, model_path: Path) -> None:
    """Publish a run's checkpoint as the project's model without a half-written file in between."""
    with checkpoint.open("rb") as source:
        atomic_write_bytes(model_path, lambda handle: shutil.copyfileobj(source, handle))


def write_json(path: Path, value: dict) -> None:
    atomic_write_bytes(path, lambda handle: handle.write((json.dumps(value, indent=2) + "\n").encode()))


@contextmanager
def stop_signals() -> Iterator[list[int]]:
    """SIGINT/SIGTERM only ask the loop to stop at the next batch boundary (the list holds the signal)."""
    received: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: received.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def train(config: Config, *, progress: bool = True, resume: str | None = None) -> TrainResult:
    """Train from scratch, or (`resume` = "auto" or a checkpoint path) continue a stopped run."""
    state = None
    if resume is not None:
        path, state = (
            latest_training_state(Path(config.output.runs_dir))
            if resume == "auto"
            else (Path(resume), read_training_state(resume))
        )
        config = config_from_dict(state["config"])  # the run continues with its own settings
        finished = json.loads((path.parent.parent / "manifest.json").read_text()).get("status") == "complete"
        if finished:
            raise UserError(f"run {path.parent.parent.name} is complete; there is nothing to resume")
        print(f"resuming {path} (epoch {state['epoch'] + 1}, batch {state['batch']})", file=sys.stderr)

    started = time.perf_counter()
    device = resolve_device(config.device)
    seed_everything(config.seed, config.deterministic)
    splits = load_splits(config.seed, config.data.val_fraction, config.data.test_fraction)
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
    model = build_model(config.model).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.optim.epochs)
    generator = loaders["train"].generator

    if state is None:
        run_dir = new_run_dir(Path(config.output.runs_dir))
        epoch, batch, history = 0, 0, []
        manifest = {
            "run_id": run_dir.name,
            "status": "running",
            "started": now(),
            "seed": config.seed,
            "deterministic": config.deterministic,
            "config": config.to_dict(),
            "data_sha256": data_fingerprint(
                *(a for s in (splits.train, splits.val, splits.test) for a in (s.images, s.labels))
            ),
            "environment": environment(Path.cwd()),
            "resumed": [],
        }
    else:
        run_dir = path.parent.parent
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        scheduler.load_state_dict(state["scheduler_state"])
        epoch, batch, history = state["epoch"], state["batch"], state["history"]
        manifest = json.loads((run_dir / "manifest.json").read_text())
        manifest["resumed"].append({"at": now(), "from": path.name, "environment": environment(Path.cwd())})
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    write_json(run_dir / "manifest.json", manifest)
    checkpoints = run_dir / "checkpoints"

    def save_state(epoch_start_rng: torch.Tensor, totals: Totals) -> Path:
        target = checkpoints / f"epoch-{epoch:04d}-batch-{batch:05d}.pt"
        save_training_state(
            target,
            {
                "config": config.to_dict(),
                "epoch": epoch,  # completed epochs
                "batch": batch,  # batches done in the current epoch
                "model_state": model.state_dict(),
                "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(),
                "rng": rng_state(),
                "loader_rng_at_epoch_start": epoch_start_rng,
                "totals": [totals.loss_sum.item(), totals.correct.item(), totals.seen],
                "history": history,
            },
        )
        for old in sorted(checkpoints.glob("*.pt"))[: -config.output.keep_checkpoints]:
            old.unlink()
        return target

    total = config.optim.epochs * len(loaders["train"])
    # A live bar on a terminal; one line per epoch in logs (CI, containers), where a bar is noise.
    live = progress and sys.stderr.isatty()
    with (
        stop_signals() as received,
        tqdm(
            total=total,
            initial=epoch * len(loaders["train"]) + batch,
            unit="batch",
            desc="train",
            disable=not live,
            dynamic_ncols=True,
        ) as bar,
    ):
        while epoch < config.optim.epochs:
            totals = Totals.zero(device)
            if state is not None:  # resuming: the epoch's data order, the position in it, the sums so far
                generator.set_state(state["loader_rng_at_epoch_start"])
                loss_sum, correct, seen = state["totals"]
                totals = Totals(
                    torch.tensor(loss_sum, device=device), torch.tensor(correct, device=device), seen
                )
            epoch_start_rng = generator.get_state()
            batches = iter(loaders["train"])
            for _ in range(batch):
                next(batches)
            if state is not None:
                restore_rng_state(state["rng"])  # dropout continues exactly where it stopped
                state = None

            def counted(batches=batches):
                nonlocal batch
                for item in batches:
                    batch += 1
                    yield item

            finished = train_batches(
                model, counted(), optimizer, device, totals, bar.update, lambda: bool(received)
            )
            if not finished:
                raise Interrupted(received[0], save_state(epoch_start_rng, totals))
            train_loss, train_acc = totals.loss_sum.item() / totals.seen, totals.correct.item() / totals.seen
            val = score(model, loaders["val"], device)
            scheduler.step()
            epoch, batch = epoch + 1, 0
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "train_accuracy": train_acc,
                    "val_loss": val.loss,
                    "val_accuracy": val.accuracy,
                }
            )
            if epoch % config.output.checkpoint_every == 0 or epoch == config.optim.epochs:
                save_state(generator.get_state(), Totals.zero(device))
            status = dict(loss=f"{train_loss:.3f}", acc=f"{train_acc:.3f}", val_acc=f"{val.accuracy:.3f}")
            if live:
                bar.set_postfix(epoch=epoch, **status)
            elif progress:
                fields = " ".join(f"{key} {value}" for key, value in status.items())
                print(f"epoch {epoch}/{config.optim.epochs} {fields}", file=sys.stderr)

    test = score(model, loaders["test"], device)
    metrics = {
        "test_accuracy": test.accuracy,
        "test_loss": test.loss,
        "val_accuracy": history[-1]["val_accuracy"],
        "train_accuracy": history[-1]["train_accuracy"],
        "epochs": config.optim.epochs,
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 2),
        "weights_sha256": weights_sha256(model.state_dict()),
        "history": history,
    }
    checkpoint = run_dir / "checkpoint.pt"
    save_checkpoint(checkpoint, model, config, {k: v for k, v in metrics.items() if k != "history"})
    write_json(run_dir / "metrics.json", metrics)
    plot_history(history, run_dir / "curves.png")
    manifest.update(
        status="complete", finished=now(), metrics={k: v for k, v in metrics.items() if k != "history"}
    )
    write_json(run_dir / "manifest.json", manifest)
    model_path = Path(config.output.model_path)
    promote(checkpoint, model_path)
    return TrainResult(run_dir=run_dir, model_path=model_path, metrics=metrics)
