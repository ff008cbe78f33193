"""The lock engine's chores: install it, point it at pip's indexes, and finish the locks it writes.

uv resolves and installs; the lock files keep pip-compile's format. This file has no template
variables and needs only the standard library (and, for `finish`, the packaging that pip vendors), so
the template's own Makefile runs it too, before any environment is synced.

bootstrap LOCK        install LOCK's pinned uv into this interpreter's environment with pip, hash-checked
                      (one line on failure)
uv-sources            pip's configured indexes and find-links as uv options, pip's index first
finish SOURCE LOCK    give a lock uv wrote pip-compile's layout, then record SOURCE's sha256 in it
"""

from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

PYPI = "https://pypi.org/simple"
LOCK_INPUT = re.compile(r"^# lock input sha256: ([0-9a-f]{64})\n?", re.M)
# pip-compile lists these last, under a comment of their own (its --allow-unsafe section).
UNSAFE = ("distribute", "pip", "setuptools")
UNSAFE_HEADER = "# The following packages are considered to be unsafe in a requirements file:"


def normalize(name: str) -> str:
    """A distribution's name as the locks and pip compare it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def bootstrap(lock: str) -> int:
    """pip, not uv, installs uv: the one tool every environment has. --require-hashes makes pip
    refuse a wheel whose sha256 is not in the lock."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    command += ["--require-hashes", "--no-deps", "--only-binary", ":all:", "--requirement", lock]
    print(f"Installing the lock engine from {lock} (pip, hash-checked)", flush=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return 0
    output = result.stderr + result.stdout
    got = re.search(r"Got\s+([0-9a-f]{64})", output)
    if "DO NOT MATCH THE HASHES" in output:
        return fail(
            f"the uv wheel pip downloaded (sha256 {got[1][:16] if got else '?'}...) matches no hash in "
            f"{lock}: the file was altered or the download tampered with; restore the file "
            f"(git checkout {lock}, or bake it again) and run make again"
        )
    last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "no output")
    return fail(
        f"could not install the lock engine from {lock} with pip ({last}); "
        "put uv on PATH, or use LOCKER=pip-tools"
    )


def pip_config() -> dict[str, list[str]]:
    """`pip config list` as option -> values: a PIP_* variable's, else those of pip's files."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    files: dict[str, list[str]] = {}
    variables: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        found = variables if key.startswith(":env:.") else files
        values = found.setdefault(key.rsplit(".", 1)[-1], [])
        values += [item for item in shlex.split(value.strip().strip("'\"")) if item not in values]
    return {**files, **variables}


def uv_sources() -> int:
    """pip merges the files of every index that has a version into the lock's hashes; uv takes one
    index's, the first that has it. Listing pip's own index (PyPI unless configured) first gives
    the same hashes whenever the other indexes mirror its files."""
    config = pip_config()
    primary = (config.get("index-url") or [PYPI])[0]
    args = ["--index", primary]
    for url in config.get("extra-index-url", []):
        args += ["--index", url]
    args += ["--default-index", primary]
    for location in config.get("find-links", []):
        args += ["--find-links", location]
    print(shlex.join(args))
    return 0


def direct_markers(source: Path) -> dict[str, str]:
    """The environment markers of an .in file's requirement lines (and of the files it includes with
    -r), as pip-compile writes them."""
    try:
        from packaging.markers import Marker
    except ImportError:  # before the first sync: the copy pip carries
        from pip._vendor.packaging.markers import Marker
    markers = {}
    for line in source.read_text().splitlines():
        requirement, _, marker = line.split(" #", 1)[0].partition(";")
        included = re.match(r"\s*(?:-r|--requirement)[\s=]+(\S+)", requirement)
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        if included:
            markers.update(direct_markers(source.parent / included[1]))
        elif name and marker.strip():
            markers[normalize(name[1])] = str(Marker(marker.strip()))
    return markers


def pip_compile_layout(text: str, source: Path) -> str:
    """uv's lock in pip-compile's layout: its header's shape, the .in's markers on the lines they
    belong to, and the unsafe packages last. Pins, hashes and `# via` lines are uv's, unchanged."""
    body = re.sub(r"\A(#.*\n)+", "", text)  # uv's two header lines
    blocks = [block for block in re.split(r"\n(?=[A-Za-z0-9])", body.strip("\n")) if block]
    markers, kept, unsafe = direct_markers(source), [], []
    for block in blocks:
        name = normalize(re.match(r"[^=\s;]+", block)[0])
        if name in markers:
            pin = re.match(r"\S+==\S+", block)[0]
            block = f"{pin} ; {markers[name]}{block[len(pin) :]}"
        (unsafe if name in UNSAFE else kept).append(block)
    python = ".".join(map(str, sys.version_info[:2]))
    lines = ["#", f"# This file was autogenerated by uv (pip-compile's format) with Python {python}"]
    lines += ["# by the following command:", "#", "#    make lock", "#", *kept]
    if unsafe:
        lines += ["", UNSAFE_HEADER, *unsafe]
    return "\n".join(lines) + "\n"


def finish(source: str, lock: str) -> int:
    lock_path, source_path = Path(lock), Path(source)
    text = LOCK_INPUT.sub("", lock_path.read_text())
    if text.startswith("# This file was autogenerated by uv via"):
        text = pip_compile_layout(text, source_path)
    lock_path.write_text(f"{text.rstrip()}\n# lock input sha256: {sha256(source_path)}\n")
    return 0


def main(argv: list[str]) -> int:
    commands = {"bootstrap": (bootstrap, 1), "uv-sources": (uv_sources, 0), "finish": (finish, 2)}
    function, count = commands.get(argv[0] if argv else "", (None, -1))
    if function is None or len(argv) - 1 != count:
        print(__doc__, file=sys.stderr)
        return 2
    return function(*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
