"""The PyTorch wheel builds this project can use, and what each needs from the machine.

Standard library only: the post-generation hook, the template's answer checks and tools/envtool.py
import it before any environment exists. Keys are torch releases ("2.14"), then the `cuda_version`
values of env.yml and the template. Each row cites its source: PyTorch's release RFCs and support
matrix, the wheels' own requirements on PyPI, and NVIDIA's CUDA compatibility tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

Arch = tuple[int, int]  # compute capability (major, minor)


@dataclass(frozen=True)
class Build:
    cuda: str  # "13.0", or "cpu"
    tag: str  # names the index: https://download.pytorch.org/whl/<tag>
    min_driver: str | None = None  # oldest driver under CUDA minor-version compatibility
    ga_driver: str | None = None  # driver released with this CUDA version (full feature set)
    sass: tuple[Arch, ...] = ()  # architectures with compiled kernels
    ptx: Arch | None = None  # PTX that newer GPUs can JIT-compile

    @property
    def cuda_int(self) -> int | None:
        """CUDA version in NVML's integer form (13.0 -> 13000), None for the CPU build."""
        if self.cuda == "cpu":
            return None
        major, minor = map(int, self.cuda.split("."))
        return major * 1000 + minor * 10


# One Build per CUDA version, shared by the releases that publish it. Architectures for Linux x86_64,
# from PyTorch's RELEASE.md support matrix (pytorch#182849, the same for 2.12 to 2.14 per
# pytorch#197555); minimum drivers under CUDA minor-version compatibility from NVIDIA's tables.
CU126 = Build(
    "12.6",
    "cu126",
    min_driver="525.60.13",
    ga_driver="560.28.03",
    sass=((5, 0), (6, 0), (7, 0), (7, 5), (8, 0), (8, 6), (9, 0)),
)
CU130 = Build(
    "13.0",
    "cu130",
    min_driver="580",
    ga_driver="580.65.06",
    sass=((7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0)),
    ptx=(12, 0),
)
# The same architectures and minimum driver as 13.0; the driver in CUDA 13.2.1's installer (pytorch#196351).
CU132 = replace(CU130, cuda="13.2", tag="cu132", ga_driver="595.58.03")
CPU = Build("cpu", "cpu")

# The builds each torch release publishes, newest release first; a release's first CUDA build is
# the one PyPI's Linux wheel carries (its cuda-toolkit requirement), the others come from
# download.pytorch.org/whl/<tag>.
RELEASES: dict[str, dict[str, Build]] = {
    # 2.15 drops cu126, and with it Maxwell, Pascal and Volta (RFC pytorch#190385); PyPI's 2.15.0
    # wheel requires cuda-toolkit 13.2.2.
    "2.15": {"13.2": CU132, "13.0": CU130, "cpu": CPU},
    # 2.14 publishes cu126, cu130 and cu132 (RFC pytorch#190355). The RFC proposed cu132 for PyPI,
    # but PyPI's 2.14.1 wheel is cu130 (cuda-toolkit 13.0.3; also googlecolab/colabtools#6093).
    "2.14": {"13.0": CU130, "13.2": CU132, "12.6": CU126, "cpu": CPU},
    # 2.13: cu130 on PyPI and cu126 for pre-Turing GPUs (googlecolab/colabtools#6053; pytorch#197555)
    "2.13": {"13.0": CU130, "12.6": CU126, "cpu": CPU},
}
# The patch release a project pins for each (`torch_version`, `make upgrade-torch`).
PINS = {"2.15": "2.15.0", "2.14": "2.14.1", "2.13": "2.13.0"}
# The Pythons each release has Linux wheels for, oldest and newest (the cp3XX tags of its files on
# PyPI): 2.15 dropped 3.10 and added 3.15.
PYTHONS = {"2.15": ("3.11", "3.15"), "2.14": ("3.10", "3.14"), "2.13": ("3.10", "3.14")}
# Every build of any release: what env.yml and `--cuda` may name.
ALL_BUILDS: dict[str, Build] = {key: build for table in RELEASES.values() for key, build in table.items()}
WHEEL_TAGS = {key: build.tag for key, build in ALL_BUILDS.items()}
TORCH_PIN = re.compile(r"^torch==(\S+)\s*$", re.M)


def release_of(version: str) -> str:
    """'2.14.1+cu130' -> '2.14': the key of RELEASES a torch version belongs to."""
    return ".".join(version.split("+")[0].split(".")[:2])


def pins_with(cuda: str) -> list[str]:
    """The pins of the releases that publish the build `cuda`, newest first."""
    return [PINS[key] for key, table in RELEASES.items() if cuda in table]


def supports_python(release: str, python: str) -> bool:
    """Whether torch `release` ("2.15") has wheels for Python `python` ("3.10")."""
    low, high = (tuple(map(int, v.split("."))) for v in PYTHONS[release])
    return low <= tuple(map(int, python.split("."))) <= high


def project_torch(prod_in: Path = Path("requirements/prod.in")) -> str | None:
    """The torch version requirements/prod.in pins, or None without one."""
    pin = TORCH_PIN.search(prod_in.read_text()) if prod_in.is_file() else None
    return pin[1] if pin else None


def installed_torch() -> str | None:
    """The installed torch's version, read from its metadata (torch itself is not imported)."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def release(version: str | None = None) -> tuple[str | None, dict[str, Build]]:
    """A torch version and the builds of its release: `version`, else the installed torch's, else
    the one requirements/prod.in pins (a release missing from the table, such as an older torch
    installed by hand, is passed over); (None, the newest release's) when none is known."""
    for candidate in (version, installed_torch(), project_torch()):
        if candidate and release_of(candidate) in RELEASES:
            return candidate, RELEASES[release_of(candidate)]
    return None, next(iter(RELEASES.values()))


def builds(version: str | None = None) -> dict[str, Build]:
    return release(version)[1]


# The line of env.yml that pins CUDA; absent for the CPU build.
CUDA_PIN = re.compile(r"^(\s*)- cuda-version=(\S+)\s*$", re.M)


def project_cuda(env_file: Path = Path("env.yml")) -> str | None:
    """The build env.yml pins (its `cuda-version`, or cpu without one); None without env.yml."""
    if not env_file.is_file():
        return None
    pin = CUDA_PIN.search(env_file.read_text())
    return pin[2] if pin else "cpu"
