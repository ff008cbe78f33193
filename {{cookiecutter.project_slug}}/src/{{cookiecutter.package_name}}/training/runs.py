"""The run directory and its one owner. A run is `runs/<UTC time>-<id>/` holding config.yaml,
manifest.json, checkpoints/ (resumable states) and, once complete, checkpoint.pt, metrics.json and
curves.png; a complete run's checkpoint is promoted to the project's model. Listing and comparing
runs live here too."""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from ..checkpoint import check, read, save
from ..errors import UserError
from ..files import atomic_write_bytes, locked
from ..plots import plot_history
from ..reproducibility import differences

CHECKPOINTS = "checkpoints"


def write_json(path: Path, value: dict) -> None:
    atomic_write_bytes(path, lambda handle: handle.write((json.dumps(value, indent=2) + "\n").encode()))


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    @classmethod
    def create(cls, runs_dir: str | Path) -> RunDir:
        """runs/<UTC timestamp>-<random suffix>: sorts by time, never collides."""
        run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
        path = Path(runs_dir) / run_id
        path.mkdir(parents=True)
        return cls(path)

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> RunDir:
        return cls(Path(checkpoint).parent.parent)

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, or {} for a run without a readable one (stopped before it was written)."""
        path = self.path / "manifest.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            return {}

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json(self.path / "manifest.json", manifest)

    def write_config(self, config: dict[str, Any]) -> None:
        text = yaml.safe_dump(config, sort_keys=False)
        atomic_write_bytes(self.path / "config.yaml", lambda handle: handle.write(text.encode()))

    def checkpoints(self) -> list[Path]:
        return sorted((self.path / CHECKPOINTS).glob("*.pt"))

    def checkpoint_path(self, epoch: int, batch: int) -> Path:
        """A resumable state is named by its position, so names sort in training order."""
        return self.path / CHECKPOINTS / f"epoch-{epoch:04d}-batch-{batch:05d}.pt"

    def save_checkpoint(self, target: Path, payload: dict[str, Any], keep: int) -> None:
        """Write a resumable state; only the newest `keep` are kept."""
        save(target, payload)
        for old in self.checkpoints()[:-keep]:
            old.unlink()

    def finish(
        self, payload: dict[str, Any], metrics: dict[str, Any], model_path: Path, since: float
    ) -> Promotion:
        """Write the final model, metrics and curves, promote the model, then mark the run complete.
        In that order, a run stopped part-way is still "running" and RESUME=auto finishes it.
        `since`: when this session of the run began, to notice another training promoting meanwhile."""
        save(self.path / "checkpoint.pt", {**payload, "run": self.name, "started": since})
        write_json(self.path / "metrics.json", metrics)
        plot_history(metrics["history"], self.path / "curves.png")
        promotion = promote(self.path / "checkpoint.pt", model_path, since)
        summary = {k: v for k, v in metrics.items() if k != "history"}
        self.write_manifest(
            {
                **self.read_manifest(),
                "status": "complete",
                "finished": now(),
                "metrics": summary,
                "promoted": promotion.promoted,
            }
        )
        return promotion


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Promotion(NamedTuple):
    promoted: bool
    other: str | None = None  # a run that promoted its model while this one trained


def promote(checkpoint: Path, model_path: Path, since: float = 0.0) -> Promotion:
    """Publish a run's checkpoint as the project's model without a half-written file in between.
    Publishers take turns (a lock). Of trainings that overlap, the one started last keeps
    `model_path`, whichever finishes first, as if they had run one after the other; `since` is
    when this one started."""
    with locked(model_path):
        other, other_started = owner_since(model_path, since)
        if other and other_started > since:
            return Promotion(False, other)
        with checkpoint.open("rb") as source:
            atomic_write_bytes(model_path, lambda handle: shutil.copyfileobj(source, handle))
    return Promotion(True, other)


def owner_since(model_path: Path, since: float) -> tuple[str | None, float]:
    """The run that published `model_path` after `since`, and when that run started."""
    try:
        if model_path.stat().st_mtime < since:
            return None, 0.0
        payload = read(model_path)
    except FileNotFoundError:
        return None, 0.0
    except UserError:  # not a model this project wrote: replace it
        return None, 0.0
    return str(payload.get("run", "?")), float(payload.get("started", 0.0))


def read_training_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"no training checkpoint at {str(path)!r}; RESUME=auto finds the newest one")
    payload = read(path)
    if payload.get("kind") != "training":
        raise UserError(f"{str(path)!r} is a finished model, not a training checkpoint to resume")
    check(path, payload)  # its config and weights, as every reader of a checkpoint checks them
    return payload


def newest_readable(candidates: list[Path]) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable training checkpoint of `candidates` (in training order); damaged ones
    are skipped with a warning."""
    for path in reversed(candidates):
        try:
            return path, read_training_checkpoint(path)
        except UserError as err:
            print(f"warning: skipping {err}", file=sys.stderr)
    return None


def latest_checkpoint(runs_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The newest readable training checkpoint under runs/."""
    candidates = sorted(
        Path(runs_dir).glob(f"*/{CHECKPOINTS}/*.pt"), key=lambda p: (p.parent.parent.name, p.name)
    )
    found = newest_readable(candidates)
    if found is None:
        raise UserError(f"no training checkpoint to resume under {str(runs_dir)!r}")
    return found


class Resumable(NamedTuple):
    run: RunDir
    checkpoint: Path | None = None  # None: a relaunched run that had no checkpoint yet starts over
    payload: dict[str, Any] | None = None


def find_resumable(runs_dir: str | Path, target: str) -> Resumable:
    """`auto` (the newest good checkpoint) or a checkpoint path, of a run that is not complete."""
    if target == "auto":
        path, payload = latest_checkpoint(Path(runs_dir))
    else:
        path, payload = Path(target), read_training_checkpoint(Path(target))
    run = RunDir.of_checkpoint(path)
    manifest = run.read_manifest()
    if path.parent.name != CHECKPOINTS or "config" not in manifest:
        raise UserError(
            f"{str(path)!r} is not in a run: a resumable checkpoint is runs/<id>/{CHECKPOINTS}/*.pt "
            "with its run's manifest.json in runs/<id>/ (`--resume auto` finds the newest)"
        )
    if manifest.get("status") == "complete":
        raise UserError(f"run {run.name} is complete; there is nothing to resume")
    return Resumable(run, path, payload)


def run_of_launch(runs_dir: str | Path, launch_id: str) -> RunDir | None:
    """The newest run that a launch with this id (a SLURM job, a torchrun rendezvous) started or
    resumed."""
    for path in sorted((p for p in Path(runs_dir).glob("*") if p.is_dir()), reverse=True):
        manifest = RunDir(path).read_manifest()
        launches = [
            manifest.get("launch", {}),
            *(entry.get("launch", {}) for entry in manifest.get("resumed", [])),
        ]
        if any(launch.get("id") == launch_id for launch in launches):
            return RunDir(path)
    return None


def continue_launch(run: RunDir) -> Resumable:
    """Where a relaunched run picks up: its newest good checkpoint, or its start."""
    found = newest_readable(run.checkpoints())
    return Resumable(run, *found) if found else Resumable(run)


def list_runs(runs_dir: Path) -> str:
    rows = [("run", "status", "task", "seed", "epochs", "test_acc", "commit")]
    for path in sorted(p for p in Path(runs_dir).glob("*") if p.is_dir()):
        manifest = RunDir(path).read_manifest()
        config, metrics = manifest.get("config", {}), manifest.get("metrics", {})
        commit = (manifest.get("environment", {}).get("git", {}).get("commit") or "")[:10]
        accuracy = metrics.get("test_accuracy")
        rows.append(
            (
                path.name,
                manifest.get("status", "unknown"),
                str(config.get("task", "")),
                str(manifest.get("seed", "")),
                str(metrics.get("epochs", config.get("optim", {}).get("epochs", ""))),
                f"{accuracy:.4f}" if accuracy is not None else "",
                commit,
            )
        )
    if len(rows) == 1:
        return f"no runs in {runs_dir}"
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def find_run(runs_dir: Path, name: str) -> RunDir:
    matches = [p for p in Path(runs_dir).glob(f"{name}*") if p.is_dir()]
    if len(matches) != 1:
        raise UserError(f"{name!r} names {len(matches)} runs in {runs_dir}; give more of the run id")
    return RunDir(matches[0])


def compare(runs_dir: Path, first: str, second: str) -> str:
    a, b = (find_run(runs_dir, name) for name in (first, second))
    diff = differences(a.read_manifest(), b.read_manifest())
    if not diff:
        return f"{a.name} and {b.name} have identical manifests"
    lines = [f"{len(diff)} manifest fields differ between {a.name} and {b.name}:"]
    lines += [f"  {key}: {json.dumps(x)} -> {json.dumps(y)}" for key, x, y in diff]
    return "\n".join(lines)
