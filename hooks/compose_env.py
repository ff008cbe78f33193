"""The generated project's `.env`, compose's variables: written by the project's own Makefile (its
one writer, which also keeps it in step with env.yml), so plain `docker compose` works at once."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ADVICE = "run `make .env` in the project before calling docker compose directly"


def write_compose_env(project: Path) -> None:
    if shutil.which("make") is None:
        print(f"note: make was not found, so .env was not written; {ADVICE}")
        return
    result = subprocess.run(
        ["make", "--no-print-directory", ".env"], cwd=project, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["make failed"])[-1]
        print(f"note: .env was not written ({reason}); {ADVICE}")
