"""The fake NVML library, checked through the real pynvml in a fresh process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from . import stub_env, write_scenario

# `project_python` (tests/conftest.py) is a real project environment, where nvidia-ml-py is locked.

# Reads every value the stub serves, and names the exception class of any NVML error.
PROBE = """
import json, pynvml

def mig_devices(handle):
    try:
        count = pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)
    except pynvml.NVMLError as err:
        return type(err).__name__
    uuids = []
    for index in range(count):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, index)
        except pynvml.NVMLError_NotFound:
            continue
        uuids.append(pynvml.nvmlDeviceGetUUID(mig))
    return uuids

def mig_mode(handle):
    try:
        return pynvml.nvmlDeviceGetMigMode(handle)
    except pynvml.NVMLError as err:
        return type(err).__name__

try:
    pynvml.nvmlInit()
except pynvml.NVMLError as err:
    print(json.dumps({"init_error": type(err).__name__, "message": str(err)}))
    raise SystemExit(0)
gpus = []
for index in range(pynvml.nvmlDeviceGetCount()):
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    uuid = pynvml.nvmlDeviceGetUUID(handle)
    gpus.append({
        "index": pynvml.nvmlDeviceGetIndex(handle),
        "name": pynvml.nvmlDeviceGetName(handle),
        "uuid": uuid,
        "by_uuid": pynvml.nvmlDeviceGetIndex(pynvml.nvmlDeviceGetHandleByUUID(uuid)),
        "memory": pynvml.nvmlDeviceGetMemoryInfo(handle).total,
        "cc": pynvml.nvmlDeviceGetCudaComputeCapability(handle),
        "mig": mig_mode(handle),
        "compute_mode": pynvml.nvmlDeviceGetComputeMode(handle),
        "mig_devices": mig_devices(handle),
    })
errors = {}
for name, call in {
    "bad_index": lambda: pynvml.nvmlDeviceGetHandleByIndex(len(gpus)),
    "bad_uuid": lambda: pynvml.nvmlDeviceGetHandleByUUID("GPU-nope"),
}.items():
    try:
        call()
    except pynvml.NVMLError as err:
        errors[name] = type(err).__name__
print(json.dumps({
    "driver": pynvml.nvmlSystemGetDriverVersion(),
    "cuda": pynvml.nvmlSystemGetCudaDriverVersion_v2(),
    "cuda_v1": pynvml.nvmlSystemGetCudaDriverVersion(),
    "gpus": gpus,
    "errors": errors,
}))
pynvml.nvmlShutdown()
try:
    pynvml.nvmlDeviceGetCount()
except pynvml.NVMLError_Uninitialized:
    pass
else:
    raise SystemExit("a call after nvmlShutdown did not fail")
"""

A100 = {
    "name": "NVIDIA A100-SXM4-40GB",
    "uuid": "GPU-11111111-2222-3333-4444-555555555555",
    "cc": (8, 0),
    "memory_mib": 40960,
    "mig": (1, 1),
    "mig_devices": ["MIG-aaaaaaaa-0000-0000-0000-000000000001", "MIG-aaaaaaaa-0000-0000-0000-000000000002"],
}
T4 = {"name": "Tesla T4", "cc": (7, 5), "memory_mib": 15360, "mig": None, "compute_mode": 3}


@pytest.fixture
def lib_dir(nvml_stub: Path) -> Path:
    return nvml_stub


def probe(python: Path, lib_dir: Path, scenario: Path) -> dict[str, Any]:
    result = subprocess.run(
        [str(python), "-c", PROBE],
        env=stub_env(lib_dir, scenario),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def test_reports_the_scenario_machine(project_python: Path, lib_dir: Path, tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path / "scenario", driver="535.104.05", cuda=12020, gpus=[A100, T4])
    seen = probe(project_python, lib_dir, scenario)
    assert seen["driver"] == "535.104.05"
    assert seen["cuda"] == seen["cuda_v1"] == 12020
    assert seen["gpus"] == [
        {
            "index": 0,
            "name": "NVIDIA A100-SXM4-40GB",
            "uuid": "GPU-11111111-2222-3333-4444-555555555555",
            "by_uuid": 0,
            "memory": 40960 * 1024 * 1024,
            "cc": [8, 0],
            "mig": [1, 1],
            "compute_mode": 0,
            "mig_devices": A100["mig_devices"],
        },
        {
            "index": 1,
            "name": "Tesla T4",
            "uuid": "GPU-00000000-0000-0000-0000-000000000001",
            "by_uuid": 1,
            "memory": 15360 * 1024 * 1024,
            "cc": [7, 5],
            "mig": "NVMLError_NotSupported",
            "compute_mode": 3,
            "mig_devices": [],
        },
    ]
    assert seen["errors"] == {"bad_index": "NVMLError_InvalidArgument", "bad_uuid": "NVMLError_NotFound"}


def test_mig_device_handles(project_python: Path, lib_dir: Path, tmp_path: Path) -> None:
    code = """
import pynvml
pynvml.nvmlInit()
gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 1)
assert pynvml.nvmlDeviceGetUUID(mig) == "MIG-aaaaaaaa-0000-0000-0000-000000000002"
assert pynvml.nvmlDeviceGetName(mig) == "NVIDIA A100-SXM4-40GB MIG"
by_uuid = pynvml.nvmlDeviceGetHandleByUUID("MIG-aaaaaaaa-0000-0000-0000-000000000002")
assert pynvml.nvmlDeviceGetUUID(by_uuid) == "MIG-aaaaaaaa-0000-0000-0000-000000000002"
for call in (pynvml.nvmlDeviceGetMigMode, pynvml.nvmlDeviceGetMemoryInfo):
    try:
        call(mig)
    except pynvml.NVMLError_NotSupported:
        pass
    else:
        raise SystemExit(f"{call.__name__} answered for a MIG device")
"""
    scenario = write_scenario(tmp_path / "scenario", gpus=[A100])
    subprocess.run([str(project_python), "-c", code], env=stub_env(lib_dir, scenario), check=True)


def test_no_scenario_is_a_driver_without_gpus(project_python: Path, lib_dir: Path, tmp_path: Path) -> None:
    seen = probe(project_python, lib_dir, tmp_path / "missing")
    assert seen["driver"] == "0.0"
    assert seen["gpus"] == []


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (9, "NVMLError_DriverNotLoaded"),
        (4, "NVMLError_NoPermission"),
        (18, "NVMLError_LibRmVersionMismatch"),
    ],
)
def test_init_error(project_python: Path, lib_dir: Path, tmp_path: Path, code: int, error: str) -> None:
    scenario = write_scenario(tmp_path / "scenario", gpus=[A100], init_error=code)
    seen = probe(project_python, lib_dir, scenario)
    assert seen["init_error"] == error
    assert seen["message"]


def test_malformed_scenario_fails_init(project_python: Path, lib_dir: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "scenario"
    scenario.write_text("gpu name=X|colour=green\n")
    assert probe(project_python, lib_dir, scenario)["init_error"] == "NVMLError_Unknown"
