"""Listing runs and comparing their manifests."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .reproducibility import differences


def read_manifest(run_dir: Path) -> dict:
    """A run's manifest, or {} for a run without a readable one (stopped before it was written)."""
    path = run_dir / "manifest.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def list_runs(runs_dir: Path) -> str:
    rows = [("run", "status", "seed", "epochs", "test_acc", "commit")]
    for run_dir in sorted(p for p in runs_dir.glob("*") if p.is_dir()):
        manifest = read_manifest(run_dir)
        metrics = manifest.get("metrics", {})
        commit = (manifest.get("environment", {}).get("git", {}).get("commit") or "")[:10]
        accuracy = metrics.get("test_accuracy")
        rows.append(
            (
                run_dir.name,
                manifest.get("status", "unknown"),
                str(manifest.get("seed", "")),
                str(metrics.get("epochs", manifest.get("config", {}).get("optim", {}).get("epochs", ""))),
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


def find_run(runs_dir: Path, name: str) -> Path:
    matches = [p for p in runs_dir.glob(f"{name}*") if p.is_dir()]
    if len(matches) != 1:
        raise UserError(f"{name!r} names {len(matches)} runs in {runs_dir}; give more of the run id")
    return matches[0]


def compare(runs_dir: Path, first: str, second: str) -> str:
    a, b = (find_run(runs_dir, name) for name in (first, second))
    diff = differences(read_manifest(a), read_manifest(b))
    if not diff:
        return f"{a.name} and {b.name} have identical manifests"
    lines = [f"{len(diff)} manifest fields differ between {a.name} and {b.name}:"]
    lines += [f"  {key}: {json.dumps(x)} -> {json.dumps(y)}" for key, x, y in diff]
    return "\n".join(lines)
