"""Seeding, fingerprints and run manifests: what it takes to rerun a run and to know what differed."""

from __future__ import annotations

import hashlib
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

LOCKS = "requirements/*.txt"  # prod, dev and the optional extras: whichever this checkout has


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; with `deterministic`, also refuse nondeterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; it must be set before CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def seed_worker(worker_id: int) -> None:
    """DataLoader worker seeding: NumPy and `random` follow the seed torch gave the worker."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global random state, in types that `torch.load(weights_only=True)` accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def sha256_bytes(chunks) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A hash of the weights alone (names, dtypes, shapes, bytes): equal hashes, equal models."""
    return sha256_bytes(
        part
        for name in sorted(state_dict)
        for tensor in [state_dict[name].detach().cpu().contiguous()]
        for part in (f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode(), tensor.numpy().tobytes())
    )


def data_fingerprint(*arrays: np.ndarray) -> str:
    return sha256_bytes(np.ascontiguousarray(array).tobytes() for array in arrays)


def file_sha256(path: Path) -> str | None:
    return sha256_bytes([path.read_bytes()]) if path.is_file() else None


def git_state(root: Path) -> dict[str, Any]:
    """Commit, dirty flag and a hash of the uncommitted diff; nulls outside a git checkout."""

    def git(*args: str) -> str | None:
        if shutil.which("git") is None:
            return None
        try:
            result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            return None
        return result.stdout.decode(errors="replace") if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "diff_sha256": None}
    diff = git("diff", "HEAD", "--binary") or ""
    untracked = git("ls-files", "--others", "--exclude-standard") or ""
    dirty = bool(diff or untracked)
    return {
        "commit": commit.strip(),
        "dirty": dirty,
        "diff_sha256": sha256_bytes([diff.encode(), untracked.encode()]) if dirty else None,
    }


def environment(root: Path) -> dict[str, Any]:
    """The fingerprint of this machine and checkout: versions, GPUs, git and lock hashes."""
    from .gpu.snapshot import collect

    snapshot = collect()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "driver_version": snapshot.driver_version,
        "gpus": [gpu.name for gpu in snapshot.gpus],
        "git": git_state(root),
        "locks": {str(path.relative_to(root)): file_sha256(path) for path in sorted(root.glob(LOCKS))},
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
    }


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, for comparing manifests key by key."""
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        for key, inner in value.items():
            items.update(flatten(inner, f"{prefix}{key}."))
        return items
    return {prefix.rstrip("."): value}


def differences(first: dict[str, Any], second: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    a, b = flatten(first), flatten(second)
    return [(key, a.get(key), b.get(key)) for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)]
