"""The locks: resolve them as of one date, all groups together, and keep pip-compile's format.

uv (or pip-tools) resolves; the lock files keep pip-compile's format. Standard library only (and, for
the layout, the packaging that pip vendors), so the template's own Makefile and hooks run it too,
before any environment exists. Paths are relative to the project's root, the working directory.

lock [--engine uv|pip-tools] [--uv UV] [--torch-index URL] [--upgrade] [--project]
                      resolve every lock as of requirements/lock-date (--upgrade: as of now, and
                      record it); --project leaves the engine's own lock alone
extras NAME...        fail in one line when an optional extra is unknown or could not be resolved
stale                 list what makes the lock files out of date (an edited .in, a moved date)
bootstrap LOCK        install LOCK's pinned uv into this interpreter's environment with pip, hash-checked
uv-sources            pip's configured indexes and find-links as uv options, pip's index first
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PYPI = "https://pypi.org/simple"
REQUIREMENTS = Path("requirements")
DATE_FILE = REQUIREMENTS / "lock-date"
ENGINE_GROUP = "bootstrap"  # uv itself: resolved on its own, since it writes the others
CORE_GROUPS = ("prod", "dev")  # always installed; every other .in is an optional extra
JOINT = REQUIREMENTS / "joint.txt"  # every group's .in resolved together: the others' constraints
INPUT_STAMP = re.compile(r"^# input (\S+) sha256: ([0-9a-f]{64})\n?", re.M)
DATE_STAMP = re.compile(r"^# resolved as of (\S+) \(requirements/lock-date\)\n?", re.M)
UNRESOLVED = re.compile(r"^# unresolvable: (.*)$", re.M)
# Upload times are compared only where an index publishes them: torch is pinned exactly in prod.in
# and comes from PyTorch's index or a wheel folder, which publish none.
UNDATED_PACKAGES = ("torch",)
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


def lock_of(group: str) -> Path:
    return REQUIREMENTS / f"{group}.txt"


def source_of(group: str) -> Path:
    return REQUIREMENTS / f"{group}.in"


def read_date(root: Path = Path()) -> str:
    """The moment every resolution is made as of: requirements/lock-date's one uncommented line."""
    lines = [line.strip() for line in (root / DATE_FILE).read_text().splitlines()]
    return next(line for line in lines if line and not line.startswith("#"))


def record_date(date: str, root: Path = Path()) -> None:
    """`make lock UPGRADE=1`, once every lock is resolved as of `date` (now): the new date."""
    path = root / DATE_FILE
    path.write_text(path.read_text().replace(read_date(root), date))


def project_groups(root: Path = Path()) -> tuple[list[str], list[str]]:
    """The core groups and the optional extras, by the .in files that exist."""
    names = sorted(path.stem for path in (root / REQUIREMENTS).glob("*.in"))
    core = [name for name in CORE_GROUPS if name in names]
    return core, [name for name in names if name not in (*CORE_GROUPS, ENGINE_GROUP)]


def one_line(output: str) -> str:
    """A resolver's failure as one line: its explanation, without the box drawing and the hints."""
    lines = []
    for line in output.splitlines():
        line = line.strip(" \u00d7\u2570\u2500\u25b6\u2502").strip()  # uv's cross and box drawing
        if line.startswith(("hint:", "warning:")):
            break
        if line and "No solution found" not in line:
            lines.append(line)
    return " ".join(lines) or "the resolver gave no reason"


@dataclass
class Engine:
    """One way to resolve: uv (the default) or pip-tools, as of `date`, with the torch index."""

    name: str
    uv: str
    torch_index: str
    date: str
    upgrade: bool

    def command(
        self, sources: list[Path], output: Path, hashes: bool, constraint: Path | None, scratch: Path
    ) -> list[str]:
        """The resolver's command line; scratch is a folder for the files it needs besides."""
        flags = ["--quiet", "--output-file", str(output)]
        flags += ["--generate-hashes"] if hashes else []
        flags += ["--upgrade"] if self.upgrade else []
        flags += ["--constraint", str(constraint)] if constraint else []
        if self.name == "pip-tools":
            flags += ["--allow-unsafe", "--strip-extras", "--no-emit-index-url", "--no-emit-find-links"]
            flags += ["--uploaded-prior-to", self.date]
            flags += ["--extra-index-url", self.torch_index] if self.torch_index else []
            return [sys.executable, "-m", "piptools", "compile", *flags, *map(str, sources)]
        flags += ["--python", sys.executable, "--index-strategy", "unsafe-best-match", *uv_source_args()]
        flags += ["--exclude-newer", self.date, "--custom-compile-command", "make lock"]
        for package in UNDATED_PACKAGES:
            flags += ["--exclude-newer-package", f"{package}=false"]
        return [self.uv, *self.torch_index_config(scratch), "pip", "compile", *flags, *map(str, sources)]

    def torch_index_config(self, scratch: Path) -> list[str]:
        """The torch index goes after pip's own, exempt from the date (a configuration file is uv's one
        way to exempt an index)."""
        if not self.torch_index:
            return []
        config = scratch / "uv.toml"
        config.write_text(f'[[index]]\nurl = "{self.torch_index}"\nexclude-newer = false\n')
        return ["--config-file", str(config)]

    def compile(
        self, sources: list[Path], output: Path, hashes: bool = False, constraint: Path | None = None
    ) -> str | None:
        """Resolve `sources` into `output`, whole or not at all; None, or why it failed in one line.
        The lock's current pins are the resolver's preferences unless upgrading."""
        partial = output.with_name(f".{output.name}.{os.getpid()}")
        if output.is_file() and not self.upgrade:
            shutil.copyfile(output, partial)
        program = "piptools compile" if self.name == "pip-tools" else f"{self.uv} pip compile"
        given = " ".join(map(str, sources)) + (f" -c {constraint}" if constraint else "")
        print(f"{program} {given} -> {output} (as of {self.date})", flush=True)
        env = {**os.environ, "CUSTOM_COMPILE_COMMAND": "make lock"}
        with tempfile.TemporaryDirectory(prefix="locktool-") as scratch:
            command = self.command(sources, partial, hashes, constraint, Path(scratch))
            result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            return one_line(result.stderr + result.stdout)
        finish(partial, sources, self.date)
        os.replace(partial, output)
        return None


class LockError(Exception):
    """A core group cannot be resolved: make lock fails with this line."""


def resolve_joint(engine: Engine, core: list[str], extras: list[str]) -> dict[str, str]:
    """Every group's .in resolved together into the joint lock; an extra that cannot join is left out,
    so that it never costs the core groups their lock. Returns those extras and why."""
    if engine.compile([source_of(g) for g in core + extras], JOINT) is None:
        return {}
    failed, kept = {}, []
    for extra in extras:  # which extras conflict with the core groups, or with the extras before them
        reason = engine.compile([source_of(g) for g in core + kept + [extra]], JOINT)
        if reason is None:
            kept.append(extra)
        else:
            failed[extra] = reason
    reason = engine.compile([source_of(g) for g in core + kept], JOINT)
    if reason is not None:
        raise LockError(
            f"{' and '.join(map(str, map(source_of, core)))} cannot be resolved together: {reason}"
        )
    return failed


def write_unresolved(extra: str, reason: str, date: str) -> None:
    """The extra's lock records why it has no pins, so that asking for it says so in one line."""
    source = source_of(extra)
    lines = [
        f"# {source} could not be resolved together with the core groups ({', '.join(CORE_GROUPS)}).",
        f"# Nothing installs from this file: fix {source} and run `make lock`.",
        f"# resolved as of {date} (requirements/lock-date)",
        f"# unresolvable: {reason}",
        f"# input {source} sha256: {sha256(source)}",
    ]
    lock_of(extra).write_text("\n".join(lines) + "\n")


def lock(engine: Engine, project_only: bool) -> int:
    """The engine's own lock (unless project_only), the joint resolution, then each group's hashed
    lock constrained by it: one group's choice can never make another unsatisfiable."""
    core, extras = project_groups()
    try:
        if not project_only and source_of(ENGINE_GROUP).is_file():
            report(
                engine.compile([source_of(ENGINE_GROUP)], lock_of(ENGINE_GROUP), hashes=True), ENGINE_GROUP
            )
        failed = resolve_joint(engine, core, extras)
        for group in core + [extra for extra in extras if extra not in failed]:
            report(engine.compile([source_of(group)], lock_of(group), hashes=True, constraint=JOINT), group)
    except LockError as err:
        return fail(f"{err} (as of {engine.date}, requirements/lock-date)")
    for extra, reason in failed.items():
        write_unresolved(extra, reason, engine.date)
        print(
            f"warning: the optional extra {extra} ({source_of(extra)}) cannot be resolved with "
            f"{' and '.join(core)} as of {engine.date}: {reason}; the default environment is locked "
            f"without it, and EXTRAS={extra} fails until {source_of(extra)} is fixed",
            file=sys.stderr,
        )
    return 0


def report(reason: str | None, group: str) -> None:
    if reason is not None:
        raise LockError(f"{source_of(group)} cannot be resolved: {reason}")


def unresolved(lock: Path) -> str | None:
    """Why an extra's lock has no pins (write_unresolved), or None."""
    found = UNRESOLVED.search(lock.read_text()) if lock.is_file() else None
    return found[1] if found else None


def extras(*names: str) -> int:
    """Before a sync asks for optional extras: each exists and has pins."""
    available = project_groups()[1]
    for name in names:
        if name not in available:
            return fail(f"EXTRAS={name}: no such extra; the extras are {', '.join(available) or 'none'}")
        reason = unresolved(lock_of(name))
        if reason:
            return fail(f"the extra {name} ({source_of(name)}) cannot be installed: {reason}")
    return 0


def stale(root: Path = Path()) -> list[str]:
    """Why the lock files are out of date, one line each: a missing lock, an .in edited since its lock
    was written, a lock resolved as of another date than requirements/lock-date."""
    date, problems = read_date(root), []
    core, extra_groups = project_groups(root)
    groups = [*([ENGINE_GROUP] if (root / source_of(ENGINE_GROUP)).is_file() else []), *core, *extra_groups]
    locks = [lock_of(group) for group in groups] + ([JOINT] if core else [])
    # the joint resolution holds every group but an extra left out of it (its lock says why)
    joined = [g for g in core + extra_groups if not unresolved(root / lock_of(g))]
    for lock_file in locks:
        if not (root / lock_file).is_file():
            problems.append(f"{lock_file} is missing: run `make lock`")
            continue
        text = (root / lock_file).read_text()
        recorded = dict(INPUT_STAMP.findall(text))
        expected = [source_of(g) for g in joined] if lock_file == JOINT else [lock_file.with_suffix(".in")]
        for source in expected:
            if recorded.get(str(source)) != sha256(root / source):
                problems.append(f"{source} changed after {lock_file} was locked: run `make lock`")
        resolved = DATE_STAMP.search(text)
        if resolved is None or resolved[1] != date:
            when = f"as of {resolved[1]}" if resolved else "with no date"
            problems.append(f"{lock_file} was resolved {when}, but {DATE_FILE} says {date}: run `make lock`")
    return list(dict.fromkeys(problems))


def stale_command() -> int:
    problems = stale()
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


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


def uv_source_args() -> list[str]:
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
    return args


def uv_sources() -> int:
    print(shlex.join(uv_source_args()))
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


def pip_compile_layout(text: str, sources: list[Path]) -> str:
    """uv's lock in pip-compile's layout: its header's shape, the .in files' markers on the lines they
    belong to, and the unsafe packages last. Pins, hashes and `# via` lines are uv's, unchanged."""
    body = re.sub(r"\A(#.*\n)+", "", text)  # uv's two header lines
    blocks = [block for block in re.split(r"\n(?=[A-Za-z0-9])", body.strip("\n")) if block]
    markers, kept, unsafe = {}, [], []
    for source in sources:
        markers.update(direct_markers(source))
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


def finish(lock: Path, sources: list[Path], date: str) -> None:
    """pip-compile's layout for a lock uv wrote; then, for either engine, the date under the header
    and each input's sha256 at the end (check-lock and the template's tests read both)."""
    text = DATE_STAMP.sub("", INPUT_STAMP.sub("", lock.read_text()))
    if text.startswith("# This file was autogenerated by uv via"):
        text = pip_compile_layout(text, sources)
    lines = text.rstrip().split("\n")
    after_header = lines.index("#    make lock") + 2 if "#    make lock" in lines else 0
    lines.insert(after_header, f"# resolved as of {date} (requirements/lock-date)")
    lines += [f"# input {source} sha256: {sha256(source)}" for source in sources]
    lock.write_text("\n".join(lines) + "\n")


def lock_command(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="locktool.py lock")
    parser.add_argument("--engine", choices=("uv", "pip-tools"), default="uv")
    parser.add_argument("--uv", default="uv")
    parser.add_argument("--torch-index", default="")
    parser.add_argument("--upgrade", action="store_true")
    parser.add_argument("--project", action="store_true")
    args = parser.parse_args(argv)
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) if args.upgrade else read_date()
    engine = Engine(args.engine, args.uv, args.torch_index, date, args.upgrade)
    code = lock(engine, project_only=args.project)
    if code == 0 and args.upgrade:  # a failed upgrade leaves the date, like the locks, as it was
        record_date(date)
    return code


def main(argv: list[str]) -> int:
    # name -> (function, its number of arguments; None: any)
    commands = {
        "lock": (lock_command, None),
        "extras": (extras, None),
        "stale": (stale_command, 0),
        "bootstrap": (bootstrap, 1),
        "uv-sources": (uv_sources, 0),
    }
    function, count = commands.get(argv[0] if argv else "", (None, None))
    if function is None or (count is not None and len(argv) - 1 != count):
        print(__doc__, file=sys.stderr)
        return 2
    return function(*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
