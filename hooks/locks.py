"""The tested locks a bake gets: the template ships, under locks/, the hashed locks its own suite ran
with, one folder per (Python, torch, build); the first `make` of such a project installs them by hash
and resolves nothing. Other answers resolve on first use, as of the project's requirements/lock-date."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

LOCKS = "locks"


LOCK_SET = re.compile(r"python(?P<python>[\d.]+)-torch(?P<torch>[\d.]+)-(?:cuda(?P<cuda>[\d.]+)|cpu)$")


def lock_set_name(python: str, torch: str, cuda: str) -> str:
    """The folder under locks/ of one combination: python3.11-torch2.13.0-cpu, ...-cuda13.0."""
    return f"python{python}-torch{torch}-{'cpu' if cuda == 'cpu' else 'cuda' + cuda}"


def answers_of(name: str) -> dict[str, str] | None:
    """The answers a folder under locks/ is for (lock_set_name's inverse); None for another name."""
    found = LOCK_SET.match(name)
    if found is None:
        return None
    return {
        "python_version": found["python"],
        "torch_version": found["torch"],
        "cuda_version": found["cuda"] or "cpu",
    }


def project_locktool(project: Path):
    """The generated project's tools/locktool.py: one reader of lock stamps and dates."""
    spec = importlib.util.spec_from_file_location("project_locktool", project / "tools" / "locktool.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def ship_locks(project: Path, context: Mapping[str, object], template: Path) -> str:
    """Copy the matching tested locks into the project when they are current; one line either way."""
    locktool = project_locktool(project)
    date = locktool.read_date(project)
    answers = (str(context["python_version"]), str(context["torch_version"]), str(context["cuda_version"]))
    name = lock_set_name(*answers)
    shipped = template / LOCKS / name
    what = f"Python {answers[0]}, torch {answers[1]}, build {answers[2]}"
    later = f"the first make resolves them as of {date} (requirements/lock-date)"
    if not shipped.is_dir():
        return f"Locks: the template ships no tested locks for {what}; {later}."
    copied = [Path(shutil.copy(lock, project / "requirements")) for lock in sorted(shipped.glob("*.txt"))]
    problems = locktool.stale(project)
    if problems:
        for lock in copied:
            lock.unlink()
        return f"Locks: the template's {LOCKS}/{name} is out of date ({problems[0]}); {later}."
    return (
        f"Locks: the template's tested locks for {what}, resolved as of {date}; make installs them by hash."
    )
