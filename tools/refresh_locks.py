"""Refresh every lock the template ships, as of the project's requirements/lock-date (--upgrade: as of
now, and record it). Each folder under locks/ is one combination of answers: the script bakes it, runs
the project's own `make lock` there (the shipped locks are its preferences, so unchanged inputs keep
their pins), and copies the locks back; the engine's lock goes back into the project template.

    python tools/refresh_locks.py [--upgrade] [--add PYTHON TORCH CUDA]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent
SKELETON = TEMPLATE / "{{cookiecutter.project_slug}}"
sys.path.insert(0, str(TEMPLATE / "hooks"))

from locks import LOCKS, answers_of, lock_set_name, project_locktool  # noqa: E402


def bake(folder: Path, out: Path) -> Path:
    """The project those locks are for, baked into `out`."""
    answers = answers_of(folder.name)
    if answers is None:
        raise SystemExit(f"error: {folder} is not named python<X.Y>-torch<X.Y.Z>-<cpu|cudaX.Y>")
    command = [sys.executable, "-m", "cookiecutter", "--no-input", "--output-dir", str(out), str(TEMPLATE)]
    command += [f"{key}={value}" for key, value in answers.items()] + ["gpu_check=skip"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    (project,) = out.iterdir()
    return project


def refresh(folder: Path, move_date: bool, keep_pins: bool) -> None:
    """The combination's locks, resolved again by the baked project's own `make lock`: with the
    shipped pins as the resolver's preferences (keep_pins), and as of now (move_date)."""
    with tempfile.TemporaryDirectory(prefix="refresh-locks-") as scratch:
        project = bake(folder, Path(scratch))
        for lock in folder.glob("*.txt") if keep_pins else ():
            shutil.copy(lock, project / "requirements")
        # The torch index make is given (the template's Makefile: PyTorch's CPU index when it answers),
        # else pip's configured sources alone.
        command = [
            "make",
            "--no-print-directory",
            "lock",
            f"TORCH_INDEX_URL={os.environ.get('TORCH_INDEX_URL', '')}",
        ]
        result = subprocess.run(command + (["UPGRADE=1"] if move_date else []), cwd=project, text=True)
        if result.returncode != 0:
            raise SystemExit(f"error: make lock failed for {folder.relative_to(TEMPLATE)}")
        problems = project_locktool(project).stale(project)
        if problems:
            raise SystemExit(f"error: {folder.relative_to(TEMPLATE)} is still stale: {problems[0]}")
        folder.mkdir(parents=True, exist_ok=True)
        for lock in (project / "requirements").glob("*.txt"):
            target = SKELETON / "requirements" if lock.name == "bootstrap.txt" else folder
            shutil.copy(lock, target / lock.name)
        if move_date:  # every other combination resolves as of the same moment
            shutil.copy(project / "requirements" / "lock-date", SKELETON / "requirements" / "lock-date")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="resolve as of now and record the date")
    parser.add_argument(
        "--add", nargs=3, metavar=("PYTHON", "TORCH", "CUDA"), help="ship one more combination"
    )
    args = parser.parse_args(argv)
    root = TEMPLATE / LOCKS
    folders = sorted(path for path in root.iterdir() if path.is_dir()) if root.is_dir() else []
    if args.add:
        folders.append(root / lock_set_name(*args.add))
    os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")
    for index, folder in enumerate(folders):
        print(f"Refreshing {folder.relative_to(TEMPLATE)}", flush=True)
        refresh(folder, move_date=args.upgrade and index == 0, keep_pins=not args.upgrade)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
