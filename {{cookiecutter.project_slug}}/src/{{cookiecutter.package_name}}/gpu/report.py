"""Render a preflight report: the JSON contract, or a table for people (coloured on terminals)."""

from __future__ import annotations

import os
import sys

from .checks import BUILD_CHECKS, FAIL, PASS, WARN, Report, cuda_text

COLOURS = {PASS: "\033[32m", WARN: "\033[33m", FAIL: "\033[31m"}
RESET = "\033[0m"


def to_json(report: Report) -> dict:
    snapshot = report.snapshot
    return {
        "status": report.status,
        "build": report.build.tag,
        "checks": [{"id": c.id, "status": c.status, "message": c.message} for c in report.checks],
        "driver_version": snapshot.driver_version,
        "cuda_driver_version": snapshot.cuda_driver_version,
        "gpus": [
            {
                "index": g.index,
                "name": g.name,
                "uuid": g.uuid,
                "memory_total_mib": g.memory_total_mib,
                "compute_capability": ".".join(map(str, g.compute_capability))
                if g.compute_capability
                else None,
            }
            for g in snapshot.gpus
        ],
        "visible_gpus": [g.index for g in report.visible.gpus] if report.visible else [],
        "recommended_cuda_version": report.recommendation,
    }


def use_colour(stream) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def build_problem(report: Report) -> bool:
    """Whether a check of the wheel build itself (driver, CUDA, architectures) did not pass: only then
    does the report speak of other builds."""
    return any(c.id in BUILD_CHECKS and c.status != PASS for c in report.checks)


def render_text(report: Report, colour: bool | None = None) -> str:
    colour = use_colour(sys.stdout) if colour is None else colour

    def tag(status: str) -> str:
        label = status.upper().ljust(4)
        return f"{COLOURS[status]}{label}{RESET}" if colour else label

    lines = [f"GPU preflight for the {report.build.tag} build: {tag(report.status)}"]
    width = max((len(c.id) for c in report.checks), default=0)
    lines += [f"  {tag(c.status)}  {c.id.ljust(width)}  {c.message}" for c in report.checks]
    snapshot = report.snapshot
    for g in snapshot.gpus:
        memory = f", {g.memory_total_mib} MiB" if g.memory_total_mib else ""
        lines.append(f"  GPU {g.index}: {g.name} ({g.sm}{memory}) {g.uuid}")
    fit = report.recommendation
    if fit and fit != report.build.cuda:
        lines.append(f"  This machine fits cuda_version {fit}: `make variant CUDA={fit}`")
    elif snapshot.cuda_driver_version and report.recommendation is None and build_problem(report):
        cuda = cuda_text(snapshot.cuda_driver_version)
        lines.append(f"  No wheel build of this project fits driver CUDA {cuda} and these GPUs.")
    return "\n".join(lines)
