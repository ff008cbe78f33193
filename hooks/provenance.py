"""Record where a generated project came from, in cruft's format, so `cruft update` works later."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

REMOTE = re.compile(r"^(\w+://|git@|gh:|gl:|bb:)")


def template_source(template: str, template_dir: Path) -> str:
    """A remote template as given; a local one as its absolute path (cookiecutter keeps what was typed)."""
    return template if REMOTE.match(template) else str(template_dir)


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


def cruft_record(context: Mapping[str, object], template_dir: Path) -> dict:
    """The .cruft.json content: public answers only, so an update picks up new template internals."""
    answers = {k: v for k, v in context.items() if not k.startswith("_")}
    answers["_template"] = template_source(str(context["_template"]), template_dir)
    return {
        "template": answers["_template"],
        "commit": template_commit(str(template_dir)),
        "checkout": context.get("_checkout"),
        "context": {"cookiecutter": answers},
        "directory": None,
    }


def write_cruft_record(project_dir: Path, context: Mapping[str, object], template_dir: Path) -> None:
    text = json.dumps(cruft_record(context, template_dir), indent=2, ensure_ascii=False) + "\n"
    (project_dir / ".cruft.json").write_text(text, encoding="utf-8")
