"""A container engine and a registry-free base image for the Docker tests.

No registry is reachable from CI, so the stand-in for `python:X.Y-slim` is made with debootstrap
and the host's own Python build, and imported once; later runs on the same machine reuse it (and
remake it when the host's Python changed). An engine the tests started is stopped again when they
finish.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

DEBIAN_SUITE = "bookworm"  # the release python:X.Y-slim is built on, and this machine's


class Unavailable(Exception):
    """Why the container tests cannot run here (they skip with this reason)."""


def docker(*args: str, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def engine_answers() -> bool:
    try:
        return docker("info", timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def docker_engine(log_dir: Path) -> Iterator[None]:
    """Use the running engine, or start dockerd for the duration and stop it afterwards."""
    if shutil.which("docker") is None:
        raise Unavailable("no docker client on PATH")
    if engine_answers():
        yield
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise Unavailable("no engine answers and dockerd is not installed (apt-get install docker.io)")
    log = (log_dir / "dockerd.log").open("w")
    process = subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not engine_answers():
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (log_dir / "dockerd.log").read_text()[-2000:]
                raise Unavailable(f"dockerd did not start: {tail}")
            time.sleep(0.5)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def image_ids() -> set[str]:
    return set(docker("images", "--quiet", "--no-trunc", timeout=60).stdout.split())


def remove_images_since(before: set[str]) -> None:
    """Remove every image made after `before` was taken (dangling build stages included). An image
    that others were built on (the runtime under the dev stage) goes once they are gone."""
    new = image_ids() - before
    while new:
        docker("rmi", "--force", *new, timeout=300)
        new, left = image_ids() - before, new
        if new >= left:
            return


def debian_mirror() -> str:
    for sources in sorted(Path("/etc/apt").glob("sources.list.d/*.sources")):
        match = re.search(r"^URIs:\s*(\S+/debian)\s*$", sources.read_text(), re.M)
        if match:
            return match[1]
    return "http://deb.debian.org/debian"


# What the host's Python build links against, and what the image's build stages use (bash, apt).
STAND_IN_PACKAGES = (
    "ca-certificates,passwd,libssl3,libffi8,libsqlite3-0,zlib1g,libbz2-1.0,liblzma5,libreadline8,"
    "libncursesw6,libuuid1,libexpat1,libcrypt1"
)
STAND_IN_LABEL = "template-tests.stand-in-python"
STAND_IN_RECIPE = "2"  # bump when the way the stand-in is made changes: older ones are remade


def host_python(python_version: str) -> tuple[Path, str]:
    """The prefix and full version of a self-contained host build of Python X.Y (pyenv's, as the
    official images build it into /usr/local), whose patch level matches the host's locks."""
    found = shutil.which(f"python{python_version}")
    probe = found and subprocess.run(
        [found, "-c", "import sys; print(sys.base_prefix, sys.version.split()[0])"],
        capture_output=True,
        text=True,
    )
    if not probe or probe.returncode != 0:
        raise Unavailable(f"no python{python_version} here to make a python:{python_version}-slim stand-in")
    prefix, version = probe.stdout.split()
    if prefix in ("/usr", "/"):
        raise Unavailable(f"python{python_version} is the system's; the stand-in needs a pyenv-like build")
    return Path(prefix), version


def stand_in_version(tag: str) -> str | None:
    """The Python version of our stand-in under `tag` ('' for an imported image of an older test
    run), or None when `tag` is a real image (pulled or built by the user): then it is left alone."""
    inspect = docker("image", "inspect", tag, timeout=60)
    if inspect.returncode != 0:
        return ""
    (image,) = json.loads(inspect.stdout)
    labels = image["Config"].get("Labels") or {}
    if STAND_IN_LABEL in labels:
        return labels[STAND_IN_LABEL]
    return "" if image.get("Comment", "").startswith("Imported") else None


def ensure_python_base(python_version: str) -> str:
    """The image `python:<version>-slim`: the real one when present, else a stand-in made from
    Debian's minimal system and the host's own Python build (same patch level as the locks)."""
    tag = f"python:{python_version}-slim"
    prefix, version = host_python(python_version)
    version = f"{version}-{STAND_IN_RECIPE}"
    if stand_in_version(tag) in (None, version):
        return tag
    if shutil.which("debootstrap") is None:
        raise Unavailable(f"{tag} is missing and debootstrap is not installed (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rootfs"
        command = ["debootstrap", "--variant=minbase", f"--include={STAND_IN_PACKAGES}", DEBIAN_SUITE]
        result = subprocess.run(
            [*command, str(root), debian_mirror()],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0:
            raise Unavailable(f"debootstrap failed: {result.stderr[-1000:]}")
        install_python(prefix, python_version, root)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        changes = ['CMD ["python3"]', f"LABEL {STAND_IN_LABEL}={version}", "ENV LANG=C.UTF-8"]
        imported = docker("import", *(f"--change={c}" for c in changes), "-", tag, stdin=tar.stdout)
        tar.wait()
        if imported.returncode != 0:
            raise Unavailable(f"docker import failed: {imported.stderr}")
    return tag


def install_python(prefix: Path, python_version: str, root: Path) -> None:
    """The host build under /usr/local, as the official image has it: the interpreter, its library
    and standard library, without the host's installed packages, and (as the official image's own
    cleanup does) without tests, bytecode or the static library."""
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        shutil.rmtree(root / junk, ignore_errors=True)
    stdlib = f"lib/python{python_version}"
    excludes = [f"./{stdlib}/site-packages/*", "./lib/*.a", "./lib/pkgconfig"]
    excludes += ["test", "tests", "idle_test", "__pycache__", "*.pyc"]  # at any depth
    copy = subprocess.run(
        f"tar -C {prefix} -c --exclude='./bin/*' {' '.join(f'--exclude={e!r}' for e in excludes)} ."
        f" | tar -C {root / 'usr/local'} -x",
        shell=True,
        capture_output=True,
        text=True,
    )
    if copy.returncode != 0:
        raise Unavailable(f"copying {prefix} failed: {copy.stderr[-1000:]}")
    shutil.copy2(prefix / "bin" / f"python{python_version}", root / "usr/local/bin")
    for name in ("python3", "python"):
        (root / "usr/local/bin" / name).symlink_to(f"python{python_version}")
    subprocess.run(["chroot", str(root), "ldconfig"], check=True)


def pip_find_links() -> list[str]:
    """Local wheel folders in pip's configuration (how this machine offers the CPU torch wheel)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    folders: list[str] = []
    for key, value in re.findall(r"^(\S+?)='(.*)'$", out, re.M):
        if key.endswith("find-links"):
            folders += [f for f in value.split() if Path(f).is_dir() and f not in folders]
    return folders


def bridge_gateway() -> str:
    """The host's address on the engine's default bridge: build containers reach it without host
    networking (pip trusts it as a plain-http mirror only because docker/pip-install says so)."""
    inspect = docker("network", "inspect", "bridge", "--format", "{{(index .IPAM.Config 0).Gateway}}")
    return inspect.stdout.strip() if inspect.returncode == 0 and inspect.stdout.strip() else "127.0.0.1"


@contextlib.contextmanager
def serve(folder: str, host: str) -> Iterator[str]:
    """An HTTP server for a wheel folder, for `pip --find-links` inside a build."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args) -> None:  # pip's many index reads are noise
            pass

    def handler(*args):
        return Quiet(*args, directory=folder)

    server = http.server.ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@contextlib.contextmanager
def build_settings() -> Iterator[dict[str, str]]:
    """The build variables (for make, and for compose from the environment) that give an image build
    what pip has here: the local wheel folder, served on the engine's bridge; the system CA bundle (a
    TLS-intercepting proxy); and no PyTorch index (unreachable). One URL per use: keep it for every
    build that should share the layer cache."""
    with contextlib.ExitStack() as stack:
        settings = {"TORCH_INDEX_URL": ""}
        links = pip_find_links()
        if links:
            settings["FIND_LINKS"] = stack.enter_context(serve(links[0], bridge_gateway()))
        if SYSTEM_CA_BUNDLE.is_file():
            settings["CA_BUNDLE"] = str(SYSTEM_CA_BUNDLE)
        yield settings
