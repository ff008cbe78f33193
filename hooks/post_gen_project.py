"""Finish a generated project: record its provenance, check the GPU setup, print the next steps."""

import json
import sys
from pathlib import Path

CONTEXT = json.loads(r"""{{ cookiecutter | tojson }}""")
sys.path.insert(0, str(Path(CONTEXT["_repo_dir"]) / "hooks"))

from preflight import run_preflight  # noqa: E402
from provenance import write_cruft_record  # noqa: E402

project = Path.cwd()
write_cruft_record(project, CONTEXT)
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
