"""Finish a generated project: record its provenance, check the GPU setup, print the next steps."""

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

from compose_env import write_compose_env  # noqa: E402
from preflight import run_preflight  # noqa: E402
from provenance import write_cruft_record  # noqa: E402

from locks import ship_locks  # noqa: E402

project = Path.cwd()
write_cruft_record(project, CONTEXT, TEMPLATE_DIR)
write_compose_env(project)
print(ship_locks(project, CONTEXT, TEMPLATE_DIR))
print()
if run_preflight(project, CONTEXT):
    sys.exit(1)
print(
    f"\nCreated {project}\n"
    f"  cd {CONTEXT['project_slug']}\n"
    "  make train      # creates the environment on first use, then trains the example\n"
    "  make gpu-check  # the full GPU report, torch included, once the environment exists\n"
    "  make help       # every workflow step\n"
)
