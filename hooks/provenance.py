"""Record where a generated project came from, in cruft's format, so `cruft update` works later."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path


def template_source(template: str) -> str:
    """A local template path made absolute (cookiecutter keeps whatever was typed); URLs unchanged."""
    path = Path(template).expanduser()
    return str(path.resolve()) if path.exists() else template


def template_commit(repo_dir: str) -> str | None:
    """The template's git commit, or None when it is not a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", repo_dir, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def cruft_record(context: Mapping[str, object]) -> dict:
    """The .cruft.json content: public answers only, so an update picks up new template internals."""
    answers = {k: v for k, v in context.items() if not k.startswith("_")}
    answers["_template"] = template_source(str(context["_template"]))
    return {
        "template": answers["_template"],
        "commit": template_commit(str(context["_repo_dir"])),
        "checkout": context.get("_checkout"),
        "context": {"cookiecutter": answers},
        "directory": None,
    }


def write_cruft_record(project_dir: Path, context: Mapping[str, object]) -> None:
    text = json.dumps(cruft_record(context), indent=2, ensure_ascii=False) + "\n"
    (project_dir / ".cruft.json").write_text(text, encoding="utf-8")
