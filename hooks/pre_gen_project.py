"""Reject bad answers before cookiecutter writes anything; the checks live in hooks/answers.py."""

import json
import sys
from pathlib import Path

CONTEXT = json.loads(r"""{{ cookiecutter | tojson }}""")
sys.path.insert(0, str(Path(CONTEXT["_repo_dir"]) / "hooks"))

from answers import problems  # noqa: E402

errors = problems(CONTEXT)
for error in errors:
    print(f"error: {error}", file=sys.stderr)
sys.exit(1 if errors else 0)
