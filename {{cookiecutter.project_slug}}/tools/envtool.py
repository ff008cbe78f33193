"""Environment chores the Makefile runs before the project's own environment can (stdlib only).

check-index URL       fail fast, with advice, when the PyTorch index cannot be reached
uv-sources            pip's configured indexes and find-links as uv options
set-variant CUDA      rewrite env.yml's CUDA pin (the one place that holds it)
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from {{ cookiecutter.package_name }}.variants import CUDA_PIN, WHEEL_TAGS  # noqa: E402


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def check_index(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return 0
    except urllib.error.HTTPError:
        return 0  # the host answered: pip will report anything wrong with the index itself
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return fail(
            f"cannot reach the PyTorch index {url} ({reason}); set TORCH_INDEX_URL to a reachable "
            "mirror, or TORCH_INDEX_URL= to use only the indexes in pip's configuration"
        )


def uv_sources() -> int:
    """Translate `pip config list` (files and PIP_* variables) into uv options."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    flags = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links"}
    args: list[str] = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        option = flags.get(key.rsplit(".", 1)[-1])
        if option:
            for item in shlex.split(value.strip().strip("'\"")):
                if item not in args:
                    args += [option, item]
    print(shlex.join(args))
    return 0


def set_variant(cuda: str, env_file: Path = ROOT / "env.yml") -> int:
    if cuda not in WHEEL_TAGS:
        return fail(f"CUDA={cuda!r} is not a build of this project; choose one of: {', '.join(WHEEL_TAGS)}")
    lines = [line for line in env_file.read_text().splitlines() if not CUDA_PIN.match(line)]
    python = next(i for i, line in enumerate(lines) if re.match(r"\s*- python=", line))
    if cuda != "cpu":
        indent = lines[python][: len(lines[python]) - len(lines[python].lstrip())]
        lines.insert(python + 1, f"{indent}- cuda-version={cuda}")
    env_file.write_text("\n".join(lines) + "\n")
    print(f"env.yml now pins the {WHEEL_TAGS[cuda]} build")
    return 0


def main(argv: list[str]) -> int:
    commands = {
        "check-index": (check_index, 1),
        "uv-sources": (uv_sources, 0),
        "set-variant": (set_variant, 1),
    }
    if not argv or argv[0] not in commands or len(argv) - 1 != commands[argv[0]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    function, _ = commands[argv[0]]
    return function(*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
