"""A fake libnvidia-ml.so.1, driven by a scenario file, to run the real pynvml without a GPU.

pynvml dlopen()s "libnvidia-ml.so.1", so a process started with `stub_env(...)` gets the stub built by
`build_stub` and sees the machine that `write_scenario` described. The scenario format is documented at
the top of fake_nvml.c.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent / "fake_nvml.c"
LIBRARY_NAME = "libnvidia-ml.so.1"
_GPU_KEYS = {"name", "uuid", "cc", "memory_mib", "mig", "compute_mode", "mig_devices"}


def build_stub(dest_dir: Path) -> Path:
    """Compile fake_nvml.c to dest_dir/libnvidia-ml.so.1 and return dest_dir, the LD_LIBRARY_PATH entry."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc is not on PATH; it is needed to build the fake NVML library")
    dest_dir.mkdir(parents=True, exist_ok=True)
    output = dest_dir / LIBRARY_NAME
    cmd = [gcc, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", str(output), str(SOURCE)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"building the fake NVML library failed:\n{result.stderr}")
    return dest_dir


def _field(value: object) -> str:
    """One scenario value: it may not hold the separators of the line format."""
    text = str(value)
    if any(sep in text for sep in "|\n\r"):
        raise ValueError(f"scenario value {text!r} contains '|' or a line break")
    return text


def _gpu_line(index: int, gpu: Mapping[str, Any]) -> str:
    unknown = set(gpu) - _GPU_KEYS
    if unknown:
        raise ValueError(f"unknown GPU keys {sorted(unknown)}; allowed: {sorted(_GPU_KEYS)}")
    major, minor = gpu["cc"]
    mig = gpu.get("mig", (0, 0))
    mig_devices = list(gpu.get("mig_devices", []))
    if any("," in uuid for uuid in mig_devices):
        raise ValueError(f"MIG device UUIDs may not contain ',': {mig_devices}")
    fields = {
        "name": gpu["name"],
        "uuid": gpu.get("uuid", f"GPU-00000000-0000-0000-0000-{index:012d}"),
        "cc": f"{major}.{minor}",
        "memory_mib": int(gpu["memory_mib"]),
        "mig": "unsupported" if mig is None else f"{mig[0]},{mig[1]}",
        "compute_mode": int(gpu.get("compute_mode", 0)),
        "mig_devices": ",".join(mig_devices),
    }
    return "gpu " + "|".join(f"{key}={_field(value)}" for key, value in fields.items())


def write_scenario(
    path: Path,
    *,
    driver: str = "575.57.08",
    cuda: int = 12090,
    gpus: Sequence[Mapping[str, Any]] = (),
    init_error: int | None = None,
) -> Path:
    """Write a scenario for the stub and return its path.

    Each GPU needs "name", "cc" (e.g. (8, 0)) and "memory_mib"; optional are "uuid" (derived from the
    index), "mig" ((current, pending), default (0, 0); None for a GPU without MIG support),
    "compute_mode" (default 0) and "mig_devices" (their "MIG-..." UUIDs, default none). MIG devices are
    only listed by NVML while the current MIG mode is 1. init_error makes nvmlInit fail with that
    NVML return code, e.g. 9 (driver not loaded), 4 (no permission), 18 (library/driver mismatch).
    """
    lines = [f"driver {_field(driver)}", f"cuda {int(cuda)}"]
    if init_error is not None:
        lines.append(f"init_error {int(init_error)}")
    lines += [_gpu_line(index, gpu) for index, gpu in enumerate(gpus)]
    path.write_text("\n".join(lines) + "\n")
    return path


def stub_env(lib_dir: Path, scenario: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of base (default os.environ) under which a new process loads the stub with this scenario."""
    env = dict(os.environ if base is None else base)
    previous = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = f"{lib_dir}{os.pathsep}{previous}" if previous else str(lib_dir)
    env["NVML_STUB_SCENARIO"] = str(scenario)
    return env
