"""Reject bad answers before cookiecutter writes anything; the checks live in hooks/answers.py."""

import json
import os
import sys
from pathlib import Path

CONTEXT = json.loads(r"""{{ cookiecutter | tojson }}""")
# cookiecutter runs hooks while its own working directory is the template, but passes `_repo_dir`
# as typed (often "."): take the parent's directory on Linux, else resolve against the shell's.
PARENT_CWD = Path(f"/proc/{os.getppid()}/cwd")
TEMPLATE_DIR = (
    PARENT_CWD.resolve() if PARENT_CWD.exists() else Path(os.environ.get("PWD", ".")) / CONTEXT["_repo_dir"]
)
sys.path.insert(0, str(TEMPLATE_DIR / "hooks"))

from answers import problems  # noqa: E402

errors = problems(CONTEXT)
for error in errors:
    print(f"error: {error}", file=sys.stderr)
sys.exit(1 if errors else 0)
