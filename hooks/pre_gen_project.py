"""Check the answers once more, now with the answers as typed; the checks live in hooks/answers.py.

cookiecutter.json's CheckAnswers extension has run the same checks before the project folder
existed; only this hook sees an answer as typed, before cookiecutter rendered it as a template.
"""

import json
import os
import sys
from pathlib import Path

CONTEXT = json.loads(r"""{{ cookiecutter | tojson }}""")
# The answers as given, before cookiecutter rendered them: it renders `key=value` answers from its
# command line as Jinja templates too, so template markup in free text would be evaluated.
TYPED = json.loads(r"""{{ _cookiecutter | default({}) | tojson }}""")
# cookiecutter runs hooks while its own working directory is the template, but passes `_repo_dir`
# as typed (often "."): take the parent's directory on Linux, else resolve against the shell's.
PARENT_CWD = Path(f"/proc/{os.getppid()}/cwd")
TEMPLATE_DIR = (
    PARENT_CWD.resolve() if PARENT_CWD.exists() else Path(os.environ.get("PWD", ".")) / CONTEXT["_repo_dir"]
)
sys.path.insert(0, str(TEMPLATE_DIR / "hooks"))

from answers import problems  # noqa: E402

errors = problems(CONTEXT, TYPED)
for error in errors:
    print(f"error: {error}", file=sys.stderr)
sys.exit(1 if errors else 0)
