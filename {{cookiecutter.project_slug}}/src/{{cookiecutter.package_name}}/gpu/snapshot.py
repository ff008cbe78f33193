"""What the driver reports: through NVML (nvidia-ml-py), else `nvidia-smi`, else nothing."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field

Arch = tuple[int, int]


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str
    memory_total_mib: int | None = None
    compute_capability: Arch | None = None
    mig_current: int | None = None  # 1 = MIG enabled; None = not supported or unknown
    mig_pending: int | None = None
    compute_mode: int | None = None  # 0 default, 2 prohibited, 3 exclusive process
    mig_devices: tuple[str, ...] = ()  # MIG-... UUIDs of the instances on this GPU

    @property
    def sm(self) -> str:
        return "sm_?" if self.compute_capability is None else "sm_{}{}".format(*self.compute_capability)


@dataclass(frozen=True)
class Problem:
    """Why the driver could not be queried; `kind` selects the advice."""

    kind: str  # no-driver, driver-not-loaded, no-permission, version-mismatch, no-bindings, error
    detail: str


@dataclass(frozen=True)
class Snapshot:
    source: str  # "nvml", "nvidia-smi" or "none"
    driver_version: str | None = None
    cuda_driver_version: int | None = None  # NVML form: 12080 = CUDA 12.8
    gpus: list[Gpu] = field(default_factory=list)
    problem: Problem | None = None


NVML_PROBLEMS = {
    "NVMLError_LibraryNotFound": "no-driver",
    "NVMLError_DriverNotLoaded": "driver-not-loaded",
    "NVMLError_NoPermission": "no-permission",
    "NVMLError_LibRmVersionMismatch": "version-mismatch",
}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(call, *args):
    """NVML answers NotSupported for features a GPU lacks (MIG on consumer cards): None then."""
    import pynvml

    try:
        return call(*args)
    except pynvml.NVMLError:
        return None


def _mig_devices(pynvml, handle) -> tuple[str, ...]:
    uuids = []
    for i in range(_optional(pynvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0):
        mig = _optional(pynvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, i)
        if mig is not None:
            uuids.append(_text(pynvml.nvmlDeviceGetUUID(mig)))
    return tuple(uuids)


def from_nvml() -> Snapshot:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        kind = NVML_PROBLEMS.get(type(err).__name__, "error")
        return Snapshot("nvml", problem=Problem(kind, str(err)))
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = _optional(pynvml.nvmlDeviceGetMemoryInfo, handle)
            mig = _optional(pynvml.nvmlDeviceGetMigMode, handle)
            gpus.append(
                Gpu(
                    index=index,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    memory_total_mib=None if memory is None else memory.total // 2**20,
                    compute_capability=tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle)),
                    mig_current=None if mig is None else mig[0],
                    mig_pending=None if mig is None else mig[1],
                    compute_mode=_optional(pynvml.nvmlDeviceGetComputeMode, handle),
                    mig_devices=_mig_devices(pynvml, handle) if mig and mig[0] else (),
                )
            )
        return Snapshot(
            "nvml",
            driver_version=_text(pynvml.nvmlSystemGetDriverVersion()),
            cuda_driver_version=pynvml.nvmlSystemGetCudaDriverVersion_v2(),
            gpus=gpus,
        )
    except pynvml.NVMLError as err:
        return Snapshot("nvml", problem=Problem("error", str(err)))
    finally:
        _optional(pynvml.nvmlShutdown)


SMI_FIELDS = "index,name,uuid,memory.total,compute_cap,mig.mode.current,mig.mode.pending,compute_mode"
SMI_COMPUTE_MODES = {"Default": 0, "Exclusive_Thread": 1, "Prohibited": 2, "Exclusive_Process": 3}


def from_nvidia_smi(smi: str) -> Snapshot:
    """Fallback for a Python without nvidia-ml-py; MIG instances are not listed this way."""

    def query(*args: str) -> str:
        return subprocess.run([smi, *args], capture_output=True, text=True, timeout=20, check=True).stdout

    try:
        header = query()
        rows = query(f"--query-gpu={SMI_FIELDS},driver_version", "--format=csv,noheader,nounits")
    except (OSError, subprocess.SubprocessError) as err:
        return Snapshot("nvidia-smi", problem=Problem("error", f"nvidia-smi failed: {err}"))
    cuda = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", header)
    gpus, driver = [], None
    for row in rows.strip().splitlines():
        index, name, uuid, memory, cap, mig, pending, mode, driver = (v.strip() for v in row.split(","))
        gpus.append(
            Gpu(
                index=int(index),
                name=name,
                uuid=uuid,
                memory_total_mib=int(memory) if memory.isdigit() else None,  # "[N/A]" on some boards
                compute_capability=tuple(map(int, cap.split("."))) if "." in cap else None,
                mig_current={"Enabled": 1, "Disabled": 0}.get(mig),
                mig_pending={"Enabled": 1, "Disabled": 0}.get(pending),
                compute_mode=SMI_COMPUTE_MODES.get(mode),
            )
        )
    return Snapshot(
        "nvidia-smi",
        driver_version=driver,
        cuda_driver_version=int(cuda[1]) * 1000 + int(cuda[2]) * 10 if cuda else None,
        gpus=gpus,
    )


def collect() -> Snapshot:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        smi = shutil.which("nvidia-smi")
        if smi:
            return from_nvidia_smi(smi)
        return Snapshot(
            "none", problem=Problem("no-bindings", "nvidia-ml-py is not installed in this Python")
        )
    return from_nvml()
