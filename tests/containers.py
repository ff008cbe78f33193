"""A container engine and a registry-free base image for the Docker tests.

No registry is reachable from CI, so the stand-in for `python:X.Y-slim` is made with debootstrap
and imported once; later runs on the same machine reuse it. An engine the tests started is stopped
again when they finish.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

DEBIAN_SUITE = "bookworm"  # its python3 is 3.11: the stand-in serves python:3.11-slim only
STAND_IN_PYTHON = "3.11"


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
    """Remove every image made after `before` was taken (dangling build stages included)."""
    new = image_ids() - before
    if new:
        docker("rmi", "--force", *new, timeout=300)


def debian_mirror() -> str:
    for sources in sorted(Path("/etc/apt").glob("sources.list.d/*.sources")):
        match = re.search(r"^URIs:\s*(\S+/debian)\s*$", sources.read_text(), re.M)
        if match:
            return match[1]
    return "http://deb.debian.org/debian"


def ensure_python_base(python_version: str) -> str:
    """The image `python:<version>-slim`, made locally from Debian packages when it is missing."""
    tag = f"python:{python_version}-slim"
    if docker("image", "inspect", tag, timeout=60).returncode == 0:
        return tag
    if python_version != STAND_IN_PYTHON:
        raise Unavailable(f"{tag} is not present and the local stand-in can only be Python {STAND_IN_PYTHON}")
    if shutil.which("debootstrap") is None:
        raise Unavailable(
            f"{tag} is not present and debootstrap is not installed (apt-get install debootstrap)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rootfs"
        packages = "python3,python3-venv,python3-pip,ca-certificates,passwd"
        result = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={packages}",
                DEBIAN_SUITE,
                str(root),
                debian_mirror(),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0:
            raise Unavailable(f"debootstrap failed: {result.stderr[-1000:]}")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(root / junk, ignore_errors=True)
        (root / "usr/bin/python").symlink_to("python3")
        for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = docker("import", "--change", 'CMD ["python3"]', "-", tag, stdin=tar.stdout)
        tar.wait()
        if imported.returncode != 0:
            raise Unavailable(f"docker import failed: {imported.stderr}")
    return tag


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


@contextlib.contextmanager
def serve(folder: str) -> Iterator[str]:
    """A loopback HTTP server for a wheel folder, for `pip --find-links` inside a build."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args) -> None:  # pip's many index reads are noise
            pass

    def handler(*args):
        return Quiet(*args, directory=folder)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def build_settings() -> Iterator[list[str]]:
    """`make build` variables that give the build what pip has here: the local wheel folder (served
    on loopback, so the build uses the host network) and the system CA bundle (TLS proxy)."""
    with contextlib.ExitStack() as stack:
        links = pip_find_links()
        settings = ["BUILD_NETWORK=host"]
        if links:
            settings.append(f"FIND_LINKS={stack.enter_context(serve(links[0]))}")
        if Path("/etc/ssl/certs/ca-certificates.crt").is_file():
            settings.append("CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt")
        yield settings
