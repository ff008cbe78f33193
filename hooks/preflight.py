"""Run the generated project's own GPU checker right after generation (no second copy of it)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from pathlib import Path


def run_preflight(project: Path, context: Mapping[str, object]) -> int:
    """Print the GPU report for the chosen build; non-zero only when gpu_check=strict finds problems."""
    mode = context["gpu_check"]
    if mode == "skip":
        print("GPU check skipped (gpu_check=skip); run `make gpu-check` on the machine that will train.")
        return 0
    sys.path.insert(0, str(project / "src"))
    try:
        package = context["package_name"]
        checks = importlib.import_module(f"{package}.gpu.checks")
        report_module = importlib.import_module(f"{package}.gpu.report")
        # torch is not installed yet, and importing it would cost seconds: the project's
        # `make gpu-check` adds that check later.
        report = checks.run_checks(str(context["cuda_version"]), include_torch=False)
    except Exception as err:  # the bake must not die of a checker bug; say so instead
        print(f"GPU check could not run ({type(err).__name__}: {err}); run `make gpu-check` later.")
        return 1 if mode == "strict" else 0
    print(report_module.render_text(report))
    if mode == "strict" and report.status != checks.PASS:
        advice = "fix the above or bake with gpu_check=warn"
        print(f"error: GPU check {report.status} and gpu_check=strict; {advice}", file=sys.stderr)
        return 1
    return 0
