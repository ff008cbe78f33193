"""Environment chores for the Makefile.

It imports only the standard library, the project's own variants.py and locktool.py beside it, so
any Python 3 runs it, before the environment exists; check-lock and develop are the exceptions in
spirit: the environment's interpreter runs them, because they read or change its site-packages.

check-index URL           fail fast, with advice, when the PyTorch index cannot be reached
set-variant CUDA          rewrite env.yml's CUDA pin (the one place that holds it)
upgrade-torch VERSION     re-pin torch in prod.in, moving env.yml to a build the release publishes
dotenv KEY=VALUE...       set these lines of .env (compose's variables), keeping any others there
develop                   put src/ on this interpreter's import path (a .pth file in site-packages)
check-lock [--image-env]  fail, naming the culprit, when an .in changed since its lock, a lock was
                          resolved as of another date, or the environment differs from the locks it
                          was synced with (--image-env: the dev image's, rebuilt rather than synced)
exec TOOL ARGS...         run a command of the project's environment (ENV_DIR, else .venv): the
                          git hooks call the locked tools this way
locked LOCKFILE CMD...    run CMD holding an exclusive lock on LOCKFILE (waits for the holder), so that
                          two `make` runs never create or sync the environment at the same time
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import re
import signal
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tools"))  # when loaded from elsewhere (the tests)

from locktool import ENGINE_GROUP, REQUIREMENTS, lock_of, normalize, stale  # noqa: E402

from {{ cookiecutter.package_name }}.variants import (  # noqa: E402
    CUDA_PIN,
    PINS,
    RELEASES,
    TORCH_PIN,
    WHEEL_TAGS,
    project_cuda,
    project_torch,
    release_of,
)

PROD_IN = ROOT / "requirements" / "prod.in"


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


def set_variant(cuda: str, env_file: Path = ROOT / "env.yml") -> int:
    torch = project_torch(PROD_IN) or ""
    table = RELEASES.get(release_of(torch), WHEEL_TAGS)
    if cuda not in table:
        choices = ", ".join(table)
        where = f"torch {torch} (requirements/prod.in)"
        return fail(f"CUDA={cuda!r} is not a build of {where}; choose one of: {choices}")
    lines = [line for line in env_file.read_text().splitlines() if not CUDA_PIN.match(line)]
    python = next(i for i, line in enumerate(lines) if re.match(r"\s*- python=", line))
    if cuda != "cpu":
        indent = lines[python][: len(lines[python]) - len(lines[python].lstrip())]
        lines.insert(python + 1, f"{indent}- cuda-version={cuda}")
    env_file.write_text("\n".join(lines) + "\n")
    print(f"env.yml now pins the {WHEEL_TAGS[cuda]} build")
    return 0


def upgrade_torch(version: str, env_file: Path = ROOT / "env.yml") -> int:
    """Pin torch `version` in prod.in; when the release publishes no wheels of env.yml's build,
    switch env.yml to the release's default build and say so. The Makefile re-locks."""
    release = release_of(version)
    if release not in RELEASES or not re.fullmatch(r"\d+\.\d+\.\d+", version):
        known = ", ".join(PINS.values())
        return fail(f"VERSION={version!r} is not a torch release in variants.py ({known}); add its row first")
    text = PROD_IN.read_text()
    if not TORCH_PIN.search(text):
        return fail(f"{PROD_IN.relative_to(ROOT)} has no `torch==<version>` line to re-pin")
    PROD_IN.write_text(TORCH_PIN.sub(f"torch=={version}", text, count=1))
    print(f"{PROD_IN.relative_to(ROOT)} now pins torch=={version}")
    cuda, table = project_cuda(env_file) or "cpu", RELEASES[release]
    if cuda in table:
        return 0
    print(f"torch {version} publishes no {WHEEL_TAGS[cuda]} wheels (only {', '.join(table)}); switching")
    return set_variant(next(iter(table)), env_file)  # the release's PyPI build


DOTENV_HEADER = "# compose's variables. make writes the build's lines from env.yml; lines you add stay."


def dotenv(*pairs: str, path: Path = ROOT / ".env") -> int:
    values = dict(pair.split("=", 1) for pair in pairs)
    lines = path.read_text().splitlines() if path.exists() else [DOTENV_HEADER]
    kept = [line for line in lines if line.split("=", 1)[0].strip() not in values]
    temporary = path.with_name(f".env.{os.getpid()}.tmp")  # whole or not at all
    temporary.write_text("\n".join([*kept, *(f"{key}={value}" for key, value in values.items())]) + "\n")
    os.replace(temporary, path)
    return 0


PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", re.M)
# What pip-sync leaves alone when it is not in a lock: environment tooling.
TOOLING = {"pip", "pip-tools", "setuptools", "wheel", "distribute", "pkg-resources"}


def develop() -> int:
    """What an editable install leaves behind, a path in a .pth file, without building anything."""
    site = Path(sysconfig.get_path("purelib"))
    (site / "_{{ cookiecutter.package_name }}.pth").write_text(f"{ROOT / 'src'}\n")
    return 0


def installed_packages() -> tuple[dict[str, str], list[str]]:
    """This interpreter's packages (normalized name: version), and a line for each broken install:
    metadata with no readable name or version (an emptied .dist-info left by an interrupted install)."""
    installed, broken = {}, []
    for dist in importlib.metadata.distributions():
        try:
            metadata = dist.metadata or {}  # None or empty when METADATA is missing or unreadable
            name, version = metadata.get("Name"), metadata.get("Version")
            reason = "no name and version in its metadata"
        except (OSError, ValueError) as err:  # undecodable, or an I/O error
            name = version = None
            reason = f"unreadable metadata: {err}"
        if name and version:
            installed[normalize(name)] = version
        else:
            broken.append(
                f"{getattr(dist, '_path', 'a package')} is a broken install ({reason}): delete that "
                "folder, then run `make sync` (or `make clean-env env` to rebuild the environment)"
            )
    return installed, broken


IMAGE_ENV_FIX = "rebuild the dev image (make build-dev on the host, or Rebuild Container)"


def synced_extras() -> list[str]:
    """The optional extras this environment was synced with (the Makefile records them)."""
    record = Path(sys.prefix) / ".extras"
    return record.read_text().split() if record.is_file() else []


def check_lock(root: Path = ROOT, image_env: bool = False) -> int:
    sync = IMAGE_ENV_FIX if image_env else "run `make sync`"
    problems, pins = stale(root), {}
    for group in [ENGINE_GROUP, "prod", "dev", *synced_extras()]:
        lock = root / lock_of(group)
        if lock.is_file() and (root / REQUIREMENTS / f"{group}.in").is_file():
            pins.update({normalize(name): version for name, version in PIN.findall(lock.read_text())})
    installed, broken = installed_packages()
    problems += broken
    for name, version in sorted(pins.items()):
        if name not in installed:
            problems.append(f"{name}=={version} is locked but not installed: {sync}")
        elif installed[name] != version:
            problems.append(f"{name} {installed[name]} is installed but the lock pins {version}: {sync}")
    extra = set(installed) - set(pins) - TOOLING
    problems += [
        f"{name} {installed[name]} is installed but not locked: {sync}, or add it to "
        "requirements/*.in and `make lock`"
        for name in sorted(extra)
    ]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print(f"locks match their inputs and this environment ({len(pins)} packages)")
    return 1 if problems else 0


def acquire(lock: Path) -> int:
    """An fd holding an exclusive flock on `lock`, a file that is still at that path.

    The holder deletes the file when done (no stale lock lies around), so a waiter that wakes up on
    a deleted file retries on the new one; a holder that dies is unlocked by the kernel.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    announced = False
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not announced:
                print(f"waiting for another make to finish with the environment ({lock})", file=sys.stderr)
                announced = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def locked(lock_file: str, *command: str) -> int:
    lock = Path(lock_file)
    try:
        fd = acquire(lock)
    except KeyboardInterrupt:
        return 130  # Ctrl-C while waiting: nothing was started
    except OSError as err:
        return fail(f"cannot lock {lock} ({err.strerror}); its folder must be writable (see ENV_DIR)")
    try:
        child = subprocess.Popen(command)
        # Ctrl-C reaches the child too: let make clean up and exit, then release the lock.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        code = child.wait()
        return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def exec_tool(tool: str, *args: str) -> int:
    program = Path(os.environ.get("ENV_DIR") or ROOT / ".venv") / "bin" / tool
    if not os.access(program, os.X_OK):
        return fail(f"{program} not found: run `make env` first (it installs the locked tools)")
    os.execv(program, [str(program), *args])
    return 1  # not reached


def check_lock_command(*flags: str) -> int:
    if set(flags) - {"--image-env"}:
        return fail(f"unknown option {' '.join(flags)} for check-lock (only --image-env)")
    return check_lock(image_env=bool(flags))


def main(argv: list[str]) -> int:
    commands = {
        "check-index": (check_index, 1),
        "set-variant": (set_variant, 1),
        "upgrade-torch": (upgrade_torch, 1),
        "dotenv": (dotenv, 1),  # one KEY=VALUE or more
        "develop": (develop, 0),
        "check-lock": (check_lock_command, 0),  # optionally --image-env
        "exec": (exec_tool, 1),  # a tool and its arguments
        "locked": (locked, 2),  # a lock file and a command, the command of any length
    }
    function, count = commands.get(argv[0] if argv else "", (None, 0))
    # these take any number of arguments past the first `count`
    variadic = function in (locked, dotenv, check_lock_command, exec_tool)
    if function is None or len(argv) - 1 < count or (len(argv) - 1 > count and not variadic):
        print(__doc__, file=sys.stderr)
        return 2
    return function(*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
