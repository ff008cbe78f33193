"""A package index on loopback for the lock tests: PEP 691 JSON pages with PEP 700 upload times (what
PyPI publishes and a dated resolution reads), serving wheels the test builds."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Release:
    name: str
    version: str
    uploaded: str  # RFC 3339, e.g. 2026-01-01T00:00:00Z
    requires: list[str] = field(default_factory=list)
    code: str = ""  # the package's __init__.py

    @property
    def module(self) -> str:
        return self.name.replace("-", "_")

    @property
    def filename(self) -> str:
        return f"{self.module}-{self.version}-py3-none-any.whl"


def build_wheel(release: Release, folder: Path) -> Path:
    """A minimal, installable pure-Python wheel with a RECORD of real hashes."""
    info = f"{release.module}-{release.version}.dist-info"
    files = {
        f"{release.module}/__init__.py": release.code,
        f"{info}/METADATA": "\n".join(
            ["Metadata-Version: 2.1", f"Name: {release.name}", f"Version: {release.version}"]
            + [f"Requires-Dist: {requirement}" for requirement in release.requires]
        )
        + "\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    path = folder / release.filename
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


def project_page(releases: list[Release], folder: Path) -> bytes:
    files = []
    for release in releases:
        digest = hashlib.sha256((folder / release.filename).read_bytes()).hexdigest()
        files.append(
            {
                "filename": release.filename,
                "url": f"../../files/{release.filename}",
                "hashes": {"sha256": digest},
                "upload-time": release.uploaded,
            }
        )
    return json.dumps({"meta": {"api-version": "1.1"}, "name": releases[0].name, "files": files}).encode()


@contextmanager
def serve_index(releases: list[Release], folder: Path):
    """Serve the releases at http://127.0.0.1:PORT/simple/ until the block ends; yields that URL."""
    folder.mkdir(parents=True, exist_ok=True)
    for release in releases:
        build_wheel(release, folder)
    by_name: dict[str, list[Release]] = {}
    for release in releases:
        by_name.setdefault(release.name, []).append(release)

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> bytes | None:
            """The headers of the page or file asked for (no range support: clients fetch files
            whole), and its body; None after a 404."""
            parts = [part for part in self.path.split("/") if part]
            if parts[:1] == ["simple"] and len(parts) == 2 and parts[1] in by_name:
                body, kind = project_page(by_name[parts[1]], folder), "application/vnd.pypi.simple.v1+json"
            elif parts[:1] == ["files"] and len(parts) == 2 and (folder / parts[1]).is_file():
                body, kind = (folder / parts[1]).read_bytes(), "application/octet-stream"
            else:
                self.send_error(404)
                return None
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return body

        def do_HEAD(self):
            self.answer()

        def do_GET(self):
            body = self.answer()
            if body is not None:
                self.wfile.write(body)

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()
