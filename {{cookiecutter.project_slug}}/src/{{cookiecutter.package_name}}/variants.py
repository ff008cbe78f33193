"""The PyTorch wheel builds this project can use, and what each needs from the machine.

Standard library only: the post-generation hook and tools/envtool.py import it before any
environment exists. Keys are the `cuda_version` values of env.yml and the template. Sources: the
PyTorch release matrix and NVIDIA's CUDA compatibility tables (see README, "GPU checks").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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


# torch 2.13 wheels
BUILDS = {
    "13.0": Build(
        "13.0",
        "cu130",
        min_driver="580",
        ga_driver="580.65.06",
        sass=((7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0)),
        ptx=(12, 0),
    ),
    "12.6": Build(
        "12.6",
        "cu126",
        min_driver="525.60.13",
        ga_driver="560.28.03",
        sass=((5, 0), (6, 0), (7, 0), (7, 5), (8, 0), (8, 6), (9, 0)),
    ),
    "cpu": Build("cpu", "cpu"),
}
WHEEL_TAGS = {key: build.tag for key, build in BUILDS.items()}

# The line of env.yml that pins CUDA; absent for the CPU build.
CUDA_PIN = re.compile(r"^(\s*)- cuda-version=(\S+)\s*$", re.M)


def project_cuda(env_file: Path = Path("env.yml")) -> str | None:
    """The build env.yml pins (its `cuda-version`, or cpu without one); None without env.yml."""
    if not env_file.is_file():
        return None
    pin = CUDA_PIN.search(env_file.read_text())
    return pin[2] if pin else "cpu"
