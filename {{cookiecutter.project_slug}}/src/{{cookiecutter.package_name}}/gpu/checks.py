"""The preflight checks: each returns pass / warn / fail with one actionable line.

`run_checks` is the single entry point for the post-generation hook, `gpu-check`, the start of
training and the container. Checks that cannot apply (no driver to ask, no torch installed, no
container) are left out of the report rather than passed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..variants import ALL_BUILDS, Build, pins_with, release
from .snapshot import Gpu, Snapshot, collect
from .visible import Visible, visible_devices

PASS, WARN, FAIL = "pass", "warn", "fail"
BUILD_CHECKS = frozenset({"driver", "cuda_compat", "arch"})  # a failure here is the wheel build's
INTEGRATED = {(5, 3), (6, 2), (7, 2), (8, 7)}  # Jetson parts: only their exact architecture runs
SHM_MINIMUM = 2**30
TOOLKIT_DOCS = "https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html"

NVML_ADVICE = {
    "no-driver": "no NVIDIA driver is installed (libnvidia-ml.so.1 not found); install the driver "
    "(e.g. `sudo ubuntu-drivers install`) and reboot, or ignore this if the project will run elsewhere",
    "no-bindings": "nvidia-ml-py is not installed in this Python, so the driver was not asked; "
    "run `make gpu-check` once the environment exists (`make env`)",
    "driver-not-loaded": "the NVIDIA kernel module is not loaded; reboot, or `sudo modprobe nvidia` "
    "(with Secure Boot on, the module must be signed: see `dmesg | grep -i nvidia`)",
    "no-permission": "no permission to use the GPU devices (/dev/nvidia*); add the user to the "
    "group that owns them (often `video`) or, in a container, pass the devices through",
    "version-mismatch": "the NVIDIA driver library and kernel module differ (the driver was "
    "upgraded without a reboot); reboot",
}


@dataclass(frozen=True)
class Check:
    id: str
    status: str
    message: str


@dataclass
class Report:
    build: Build
    snapshot: Snapshot
    visible: Visible | None
    checks: list[Check] = field(default_factory=list)
    recommendation: str | None = None

    @property
    def status(self) -> str:
        statuses = {check.status for check in self.checks}
        return FAIL if FAIL in statuses else WARN if WARN in statuses else PASS

    def first(self, *statuses: str) -> Check | None:
        return next((c for c in self.checks if c.status in statuses), None)


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def cuda_text(cuda_int: int) -> str:
    return f"{cuda_int // 1000}.{cuda_int % 1000 // 10}"


def arch_supported(build: Build, cc: tuple[int, int]) -> bool:
    """SASS runs on the same major architecture at an equal or higher minor (not on Jetson
    parts); PTX is JIT-compiled for any newer GPU."""
    if cc in INTEGRATED:
        return cc in build.sass
    if any(major == cc[0] and minor <= cc[1] for major, minor in build.sass):
        return True
    return build.ptx is not None and cc >= build.ptx


def arch_range(build: Build) -> str:
    names = [f"sm_{a}{b}" for a, b in build.sass]
    return f"{names[0]} to {names[-1]}" if names else "none"


def fits(build: Build, snapshot: Snapshot, gpus: list[Gpu]) -> bool:
    """Would this build run on this machine's driver and GPUs?"""
    if build.cuda_int is None or not gpus or snapshot.driver_version is None:
        return False
    if version_tuple(snapshot.driver_version) < version_tuple(build.min_driver):
        return False
    if snapshot.cuda_driver_version and snapshot.cuda_driver_version // 1000 < build.cuda_int // 1000:
        return False
    return all(g.compute_capability and arch_supported(build, g.compute_capability) for g in gpus)


def recommend(snapshot: Snapshot, gpus: list[Gpu], table: Mapping[str, Build]) -> str | None:
    if snapshot.problem is None and not snapshot.gpus:
        return "cpu"
    return next((key for key, build in table.items() if fits(build, snapshot, gpus)), None)


def _switch(key: str | None, build: Build) -> str:
    if key is None or key == build.cuda:
        return ""
    return f" or use cuda_version {key} (`make variant CUDA={key}`)"


# --- the checks ---------------------------------------------------------------------------------


def check_nvml(build: Build, snapshot: Snapshot) -> Check:
    if snapshot.problem:
        advice = NVML_ADVICE.get(snapshot.problem.kind, f"NVML failed: {snapshot.problem.detail}")
        if build.cuda_int is None:
            return Check("nvml", PASS, "CPU build: no NVIDIA driver needed")
        soft = snapshot.problem.kind in ("no-driver", "no-bindings")  # normal on a laptop or in CI
        return Check("nvml", WARN if soft else FAIL, advice)
    count = len(snapshot.gpus)
    summary = f"driver {snapshot.driver_version}"
    if snapshot.cuda_driver_version:
        summary += f" (CUDA {cuda_text(snapshot.cuda_driver_version)})"
    summary += f", {count} GPU{'s' if count != 1 else ''} via {snapshot.source}"
    if count == 0 and build.cuda_int is not None:
        return Check("nvml", WARN, f"{summary}: no GPU to run the {build.tag} build on")
    return Check("nvml", PASS, summary)


def check_driver(build: Build, snapshot: Snapshot, recommendation: str | None) -> Check:
    driver = snapshot.driver_version
    if version_tuple(driver) >= version_tuple(build.min_driver):
        return Check("driver", PASS, f"driver {driver} >= {build.min_driver}, the minimum for {build.tag}")
    return Check(
        "driver",
        FAIL,
        f"driver {driver} is older than {build.min_driver}, the minimum for the {build.tag} wheels; "
        f"upgrade the driver{_switch(recommendation, build)}",
    )


def check_cuda_compat(build: Build, snapshot: Snapshot, recommendation: str | None) -> Check:
    have, need = snapshot.cuda_driver_version, build.cuda_int
    if have is None:
        return Check("cuda_compat", WARN, "the driver did not report its CUDA version")
    prefix = f"driver {snapshot.driver_version} supports CUDA {cuda_text(have)}"
    if have >= need:
        return Check("cuda_compat", PASS, f"{prefix}; the {build.tag} wheels need {build.cuda}")
    if have // 1000 < need // 1000:
        return Check(
            "cuda_compat",
            FAIL,
            f"{prefix}; the {build.tag} wheels need driver >= {build.min_driver} — upgrade the "
            f"driver{_switch(recommendation, build)}",
        )
    return Check(
        "cuda_compat",
        WARN,
        f"{prefix}; the {build.tag} wheels run through minor-version compatibility (no PTX JIT); "
        f"driver >= {build.ga_driver} gives full CUDA {build.cuda} support",
    )


def check_arch(build: Build, snapshot: Snapshot, gpus: list[Gpu], table: Mapping[str, Build]) -> Check:
    bad = [g for g in gpus if not (g.compute_capability and arch_supported(build, g.compute_capability))]
    if not bad:
        archs = ", ".join(sorted({g.sm for g in gpus}))
        return Check("arch", PASS, f"{archs} supported by the {build.tag} wheels ({arch_range(build)})")
    listed = "; ".join(f"GPU {g.index} {g.name} ({g.sm})" for g in bad)
    message = f"{listed}: no kernels in the {build.tag} wheels ({arch_range(build)})"
    other = next(
        (b for b in table.values() if b.sass and all(arch_supported(b, g.compute_capability) for g in gpus)),
        None,
    )
    if other is None:
        message += "; no wheel build of this project supports it"
    else:
        message += f"; use cuda_version {other.cuda} (`make variant CUDA={other.cuda}`)"
        if version_tuple(snapshot.driver_version or "0") < version_tuple(other.min_driver):
            message += f", which needs driver >= {other.min_driver}"
    if any(g.compute_capability in INTEGRATED for g in bad):
        message += "; Jetson GPUs need NVIDIA's JetPack wheels"
    return Check("arch", FAIL, message)


def check_mig(gpus: list[Gpu], visible: Visible) -> Check:
    enabled = [g for g in gpus if g.mig_current == 1]
    unselected = [g for g in enabled if not set(g.mig_devices) & set(visible.mig_devices)]
    if unselected:
        g = unselected[0]
        example = g.mig_devices[0] if g.mig_devices else "MIG-<uuid from nvidia-smi -L>"
        return Check(
            "mig",
            FAIL,
            f"MIG is enabled on GPU {g.index} ({g.name}) but no MIG device is selected; "
            f"set CUDA_VISIBLE_DEVICES={example}, or disable MIG (`sudo nvidia-smi -i {g.index} -mig 0`)",
        )
    pending = [g for g in gpus if g.mig_pending is not None and g.mig_pending != g.mig_current]
    if pending:
        return Check(
            "mig", WARN, f"GPU {pending[0].index} has a MIG mode change pending: reset the GPU or reboot"
        )
    if enabled:
        return Check("mig", PASS, f"MIG device selected: {', '.join(visible.mig_devices)}")
    return Check("mig", PASS, "MIG not enabled")


def check_compute_mode(gpus: list[Gpu]) -> Check:
    prohibited = [g for g in gpus if g.compute_mode == 2]
    if prohibited:
        g = prohibited[0]
        return Check(
            "compute_mode",
            FAIL,
            f"GPU {g.index} is in Prohibited compute mode: no process can use it; "
            f"`sudo nvidia-smi -i {g.index} -c DEFAULT` or choose another GPU",
        )
    exclusive = [g for g in gpus if g.compute_mode in (1, 3)]
    if exclusive:
        g = exclusive[0]
        return Check(
            "compute_mode",
            WARN,
            f"GPU {g.index} is in Exclusive compute mode: a second process using it (another job, "
            "a notebook) will fail with 'busy or unavailable'",
        )
    return Check("compute_mode", PASS, "Default compute mode")


def check_visible_devices(snapshot: Snapshot, visible: Visible, env: Mapping[str, str]) -> Check:
    if visible.raw is None:
        return Check(
            "visible_devices", PASS, f"CUDA_VISIBLE_DEVICES unset: all {len(snapshot.gpus)} GPU(s) visible"
        )
    seen = ", ".join(f"{g.index} ({g.name})" for g in visible.gpus) or "no GPU"
    message = f"CUDA_VISIBLE_DEVICES={visible.raw!r}: the job sees {seen}"
    hidden = not visible.gpus and bool(snapshot.gpus)
    if hidden and not hides_on_purpose(visible.raw):  # a mistyped index or UUID: the GPU build idles
        return Check(
            "visible_devices",
            FAIL,
            f"{message}; {visible.ignored}: name a GPU by index (0 to {len(snapshot.gpus) - 1}) or by a "
            "UUID from `nvidia-smi -L`, or unset the variable",
        )
    if visible.ignored:
        return Check("visible_devices", WARN, f"{message}; {visible.ignored}")
    if hidden:
        return Check("visible_devices", WARN, f"{message}: training will run on the CPU")
    names = {g.name for g in snapshot.gpus}
    if visible.uses_indices and len(names) > 1 and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        return Check(
            "visible_devices",
            WARN,
            f"{message} by nvidia-smi's numbering, but CUDA numbers mixed GPUs fastest first: "
            "set CUDA_DEVICE_ORDER=PCI_BUS_ID or select by UUID",
        )
    return Check("visible_devices", PASS, message)


def hides_on_purpose(raw: str) -> bool:
    """An empty value or one starting with a negative index (`-1`): the usual ways to hide every GPU."""
    first = raw.split(",")[0].strip()
    return not first or (first.startswith("-") and first[1:].isdigit())


def _plural(count: int, noun: str, plural: str | None = None) -> str:
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def cuda_device_count(visible: Visible | None) -> int:
    """How many devices CUDA enumerates: the visible GPUs, or one for MIG (CUDA shows a process a
    single MIG instance)."""
    if visible is None:
        return 0
    return 1 if visible.mig_devices else len(visible.gpus)


def _selection(visible: Visible) -> str:
    if visible.raw is None:
        return ""
    return f" (CUDA_VISIBLE_DEVICES={visible.raw if visible.raw.strip() else repr(visible.raw)})"


def check_processes(build: Build, visible: Visible | None, nproc: int, env: Mapping[str, str]) -> Check:
    """Can `nproc` training processes each have a GPU of their own (NCCL), or will they share the CPU?

    Process i uses CUDA device i; which physical GPUs those are is known when all are used or the
    order is PCI_BUS_ID (by default CUDA numbers mixed GPUs fastest first), else every visible one counts.
    """
    devices = 0 if build.cuda_int is None else cuda_device_count(visible)
    processes = _plural(nproc, "process", "processes")
    if devices == 0:
        if build.cuda_int is None:
            why = "CPU build"
        else:
            why = "no GPU found" if visible is None else f"no GPU visible{_selection(visible)}"
        return Check("processes", PASS, f"{why}: {processes} will use gloo on the CPU")
    if nproc > devices:
        where = _selection(visible)
        if visible.mig_devices:
            where += "; CUDA shows a process one MIG device"
        fewer = "NPROC=1" if devices == 1 else f"NPROC={devices} or fewer"
        verb = "is" if devices == 1 else "are"
        return Check(
            "processes",
            FAIL,
            f"NPROC={nproc} but {_plural(devices, 'GPU')} {verb} visible{where}: one process per GPU; "
            f"use {fewer}, or device=cpu for gloo on the CPU",
        )
    message = f"{processes} on {nproc} of {_plural(devices, 'visible GPU')} (NCCL)"
    known_order = nproc == devices or env.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID"
    names = sorted({g.name for g in (visible.gpus[:nproc] if known_order else visible.gpus)})
    if len(names) > 1:
        return Check(
            "processes",
            WARN,
            f"{message}, mixed models ({', '.join(names)}): the slowest GPU in use sets the pace; "
            "select one model with CUDA_VISIBLE_DEVICES",
        )
    return Check("processes", PASS, f"{message}; peer-to-peer access is not required")


def process_problem(
    cuda: str, nproc: int, *, snapshot: Snapshot | None = None, env: Mapping[str, str] | None = None
) -> str | None:
    """Why `nproc` processes cannot each have a GPU here (the FAIL message), or None: for the
    launcher, before any process starts."""
    env = os.environ if env is None else env
    snapshot = collect() if snapshot is None else snapshot
    visible = None if snapshot.problem else visible_devices(snapshot.gpus, env)
    check = check_processes(ALL_BUILDS[cuda], visible, nproc, env)
    return check.message if check.status == FAIL else None


def check_torch_build(build: Build, snapshot: Snapshot) -> Check | None:
    """The installed torch against the project's build and the driver; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    cuda = torch.version.cuda
    label = f"torch {torch.__version__}"
    if build.cuda_int is not None and cuda is None:
        return Check(
            "torch_build",
            FAIL,
            f"{label} is a CPU-only build in a {build.tag} project; `make sync` installs the locked one",
        )
    if cuda is None:
        return Check("torch_build", PASS, f"{label} (CPU build)")
    major, minor = map(int, cuda.split(".")[:2])
    torch_int = major * 1000 + minor * 10
    driver = snapshot.cuda_driver_version
    if driver is not None and driver // 1000 < major:
        return Check(
            "torch_build",
            FAIL,
            f"{label} needs CUDA {cuda} but the driver supports only {cuda_text(driver)}; upgrade the driver",
        )
    if build.cuda_int is not None and torch_int // 1000 != build.cuda_int // 1000:
        return Check(
            "torch_build",
            WARN,
            f"{label} is built for CUDA {cuda} but env.yml pins {build.cuda}; run `make sync` (or re-lock)",
        )
    if build.cuda_int is None:
        return Check(
            "torch_build", WARN, f"{label} is a CUDA build in a CPU project: a large download for nothing"
        )
    return Check("torch_build", PASS, f"{label} built for CUDA {cuda}")


def check_shm(path: str = "/dev/shm") -> Check | None:
    if not hasattr(os, "statvfs") or not os.path.isdir(path):  # no /dev/shm on macOS or Windows
        return None
    stats = os.statvfs(path)
    size = stats.f_frsize * stats.f_blocks
    if size < SHM_MINIMUM:
        return Check(
            "shm",
            WARN,
            f"{path} is {size // 2**20} MiB: DataLoader workers die with 'Bus error'; give the "
            "container more (`docker run --shm-size=2g`, compose `shm_size: 2gb`) or use `ipc: host`",
        )
    return Check("shm", PASS, f"{path} is {size / 2**30:.1f} GiB")


def container_toolkit_found() -> str | None:
    """Where the NVIDIA Container Toolkit shows itself: a tool on PATH, a Docker runtime or a CDI spec."""
    for tool in ("nvidia-ctk", "nvidia-container-runtime-hook", "nvidia-container-toolkit"):
        if shutil.which(tool):
            return f"{tool} on PATH"
    for folder in ("/etc/cdi", "/var/run/cdi"):
        for spec in sorted(Path(folder).glob("*")) if Path(folder).is_dir() else []:
            if "nvidia.com/gpu" in spec.read_text(errors="ignore"):
                return f"CDI spec {spec}"
    if shutil.which("docker"):
        try:
            info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=5).stdout
        except subprocess.TimeoutExpired:  # an engine that hangs has no usable runtime either
            info = ""
        runtimes = re.search(r"^\s*Runtimes:(.*)$", info, re.M)
        if runtimes and "nvidia" in runtimes[1].split():
            return "docker runtime 'nvidia'"
    return None


def check_container_toolkit(build: Build) -> Check:
    if build.cuda_int is None:
        return Check("container_toolkit", PASS, "CPU build: containers need no GPU runtime")
    found = container_toolkit_found()
    if found:
        return Check("container_toolkit", PASS, f"NVIDIA Container Toolkit: {found}")
    return Check(
        "container_toolkit",
        FAIL,
        "NVIDIA Container Toolkit not found, so `docker run --gpus` fails with 'could not select "
        f"device driver'; install it ({TOOLKIT_DOCS}) and restart Docker",
    )


def check_release(cuda: str, torch_version: str | None, table: Mapping[str, Build]) -> Check | None:
    """A FAIL when the torch release publishes no wheels of the project's build; else nothing."""
    if cuda in table or torch_version is None:
        return None
    advice = f"`make variant CUDA={next(iter(table))}`"
    with_it = pins_with(cuda)
    if with_it:
        advice += f", or `make upgrade-torch VERSION={with_it[0]}`"
    tag, published = ALL_BUILDS[cuda].tag, ", ".join(table)
    return Check("release", FAIL, f"torch {torch_version} publishes no {tag} wheels ({published}): {advice}")


def run_checks(
    cuda: str,
    *,
    snapshot: Snapshot | None = None,
    env: Mapping[str, str] | None = None,
    include_torch: bool = True,
    docker: bool = False,
    nproc: int | None = None,
    torch_version: str | None = None,
) -> Report:
    """`torch_version`: the release whose builds apply; by default the installed torch's, else the
    one requirements/prod.in pins."""
    env = os.environ if env is None else env
    torch_version, table = release(torch_version)
    build = table.get(cuda, ALL_BUILDS[cuda])
    snapshot = collect() if snapshot is None else snapshot
    visible = None if snapshot.problem else visible_devices(snapshot.gpus, env)
    used = visible.gpus if visible else []
    report = Report(build, snapshot, visible, recommendation=recommend(snapshot, used, table))
    report.checks += [c for c in (check_release(cuda, torch_version, table),) if c]
    report.checks.append(check_nvml(build, snapshot))
    if visible is not None and build.cuda_int is not None and snapshot.gpus:
        report.checks += [
            check_driver(build, snapshot, report.recommendation),
            check_cuda_compat(build, snapshot, report.recommendation),
        ]
        if used:
            report.checks.append(check_arch(build, snapshot, used, table))
        report.checks += [
            check_mig(used, visible),
            check_compute_mode(used),
            check_visible_devices(snapshot, visible, env),
        ]
    if nproc is not None:
        report.checks.append(check_processes(build, visible, nproc, env))
    optional = [check_torch_build(build, snapshot) if include_torch else None, check_shm()]
    report.checks += [check for check in optional if check is not None]
    if docker:
        report.checks.append(check_container_toolkit(build))
    return report
