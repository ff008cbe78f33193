"""The generated GPU checker against described machines: the real pynvml code runs on a compiled
stand-in libnvidia-ml.so.1 (tests/nvml_stub), in a real project environment."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import bake, bake_ok
from .nvml_stub import stub_env, write_scenario

H100 = {
    "name": "NVIDIA H100 80GB HBM3",
    "cc": (9, 0),
    "memory_mib": 81559,
    "uuid": "GPU-9a1b2c3d-0000-0000-0000-000000000000",
}
A100 = {"name": "NVIDIA A100-SXM4-40GB", "cc": (8, 0), "memory_mib": 40960}
P100 = {"name": "Tesla P100-PCIE-16GB", "cc": (6, 0), "memory_mib": 16384, "mig": None}
RTX5090 = {"name": "NVIDIA GeForce RTX 5090", "cc": (12, 0), "memory_mib": 32607, "mig": None}
B300 = {"name": "NVIDIA B300", "cc": (10, 3), "memory_mib": 275040}
GB10 = {"name": "NVIDIA GB10", "cc": (12, 1), "memory_mib": 122572, "mig": None}
ORIN = {"name": "Orin", "cc": (8, 7), "memory_mib": 30697, "mig": None}
H100_B = {**H100, "uuid": "GPU-9a1b2c3d-0000-0000-0000-000000000001"}
MIG_A100 = {**A100, "mig": (1, 1), "mig_devices": ["MIG-5f1c0000-0000-0000-0000-000000000001"]}
NEW_DRIVER = {"driver": "580.65.06", "cuda": 13000}
DRIVER_535 = {"driver": "535.104.05", "cuda": 12020}

# id: (build, scenario or None for "no library at all", CUDA_VISIBLE_DEVICES or None, expected)
# expected: overall status, {check id: status}, {check id: text in its message}, recommendation
SCENARIOS = {
    "no-driver-gpu-build": (
        "13.0",
        None,
        None,
        ("warn", {"nvml": "warn"}, {"nvml": "no NVIDIA driver"}, None),
    ),
    "no-driver-cpu-build": ("cpu", None, None, ("pass", {"nvml": "pass"}, {"nvml": "CPU build"}, None)),
    "driver-not-loaded": (
        "13.0",
        {"init_error": 9, "gpus": [H100]},
        None,
        ("fail", {"nvml": "fail"}, {"nvml": "kernel module is not loaded"}, None),
    ),
    "no-permission": (
        "13.0",
        {"init_error": 4, "gpus": [H100]},
        None,
        ("fail", {"nvml": "fail"}, {"nvml": "no permission"}, None),
    ),
    "driver-upgraded-no-reboot": (
        "12.6",
        {"init_error": 18, "gpus": [H100]},
        None,
        ("fail", {"nvml": "fail"}, {"nvml": "reboot"}, None),
    ),
    "driver-without-gpus": (
        "13.0",
        {**NEW_DRIVER, "gpus": []},
        None,
        ("warn", {"nvml": "warn"}, {"nvml": "no GPU to run"}, "cpu"),
    ),
    "h100-cu130-all-good": (
        "13.0",
        {**NEW_DRIVER, "gpus": [H100]},
        None,
        (
            "pass",
            {
                "nvml": "pass",
                "driver": "pass",
                "cuda_compat": "pass",
                "arch": "pass",
                "mig": "pass",
                "compute_mode": "pass",
                "visible_devices": "pass",
            },
            {"arch": "sm_90"},
            "13.0",
        ),
    ),
    "driver-535-cu130": (
        "13.0",
        {**DRIVER_535, "gpus": [A100]},
        None,
        (
            "fail",
            {"driver": "fail", "cuda_compat": "fail", "arch": "pass"},
            {
                "cuda_compat": "driver 535.104.05 supports CUDA 12.2; the cu130 wheels need driver >= 580 "
                "— upgrade the driver or use cuda_version 12.6"
            },
            "12.6",
        ),
    ),
    "driver-535-cu126-minor-compat": (
        "12.6",
        {**DRIVER_535, "gpus": [A100]},
        None,
        (
            "warn",
            {"driver": "pass", "cuda_compat": "warn"},
            {"cuda_compat": "minor-version compatibility"},
            "12.6",
        ),
    ),
    "driver-470-cu126": (
        "12.6",
        {"driver": "470.256.02", "cuda": 11040, "gpus": [A100]},
        None,
        ("fail", {"driver": "fail", "cuda_compat": "fail"}, {"driver": "older than 525.60.13"}, None),
    ),
    "rtx5090-cu126": (
        "12.6",
        {**NEW_DRIVER, "gpus": [RTX5090]},
        None,
        ("fail", {"arch": "fail"}, {"arch": "RTX 5090 (sm_120): no kernels in the cu126 wheels"}, "13.0"),
    ),
    "rtx5090-cu126-old-driver": (
        "12.6",
        {"driver": "575.57.08", "cuda": 12090, "gpus": [RTX5090]},
        None,
        (
            "fail",
            {"arch": "fail"},
            {"arch": "use cuda_version 13.0 (`make variant CUDA=13.0`), which needs driver >= 580"},
            None,
        ),
    ),
    "p100-cu130": (
        "13.0",
        {**NEW_DRIVER, "gpus": [P100]},
        None,
        (
            "fail",
            {"arch": "fail"},
            {
                "arch": "Tesla P100-PCIE-16GB (sm_60): no kernels in the cu130 wheels (sm_75 to sm_120); "
                "use cuda_version 12.6"
            },
            "12.6",
        ),
    ),
    "b300-same-major": (
        "13.0",
        {**NEW_DRIVER, "gpus": [B300]},
        None,
        ("pass", {"arch": "pass"}, {"arch": "sm_103"}, "13.0"),
    ),
    "gb10-same-major": ("13.0", {**NEW_DRIVER, "gpus": [GB10]}, None, ("pass", {"arch": "pass"}, {}, "13.0")),
    "jetson-orin-integrated": (
        "13.0",
        {**NEW_DRIVER, "gpus": [ORIN]},
        None,
        ("fail", {"arch": "fail"}, {"arch": "JetPack"}, None),
    ),
    "mixed-h100-p100": (
        "13.0",
        {**NEW_DRIVER, "gpus": [H100, P100]},
        None,
        ("fail", {"arch": "fail"}, {"arch": "GPU 1 Tesla P100"}, "12.6"),
    ),
    "mixed-only-h100-visible": (
        "13.0",
        {**NEW_DRIVER, "gpus": [H100, P100]},
        "GPU-9a1b",
        (
            "pass",
            {"arch": "pass", "visible_devices": "pass"},
            {"visible_devices": "the job sees 0 (NVIDIA H100 80GB HBM3)"},
            "13.0",
        ),
    ),
    "mixed-by-index-without-pci-order": (
        "13.0",
        {**NEW_DRIVER, "gpus": [H100, A100]},
        "1",
        ("warn", {"visible_devices": "warn"}, {"visible_devices": "CUDA_DEVICE_ORDER=PCI_BUS_ID"}, "13.0"),
    ),
    "invalid-entry-truncates": (
        "13.0",
        {**NEW_DRIVER, "gpus": [H100, H100, H100]},
        "1,abc,0",
        (
            "warn",
            {"visible_devices": "warn"},
            {"visible_devices": "'abc' matches no GPU here, so CUDA ignores 'abc,0'"},
            "13.0",
        ),
    ),
    "repeated-entry-truncates": (
        "13.0",
        {**NEW_DRIVER, "gpus": [H100, H100]},
        "0,0",
        ("warn", {"visible_devices": "warn"}, {"visible_devices": "'0' repeats a device"}, "13.0"),
    ),
    "empty-hides-all": (
        "13.0",
        {**NEW_DRIVER, "gpus": [H100]},
        "",
        ("warn", {"visible_devices": "warn"}, {"visible_devices": "training will run on the CPU"}, None),
    ),
    "index-matching-no-gpu-fails": (
        "13.0",
        {**NEW_DRIVER, "gpus": [H100]},
        "7",
        ("fail", {"visible_devices": "fail"}, {"visible_devices": "'7' matches no GPU here"}, None),
    ),
    "uuid-matching-no-gpu-fails": (
        "13.0",
        {**NEW_DRIVER, "gpus": [H100]},
        "GPU-ffff",
        ("fail", {"visible_devices": "fail"}, {"visible_devices": "nvidia-smi -L"}, None),
    ),
    "minus-one-hides-all": (
        "13.0",
        {**NEW_DRIVER, "gpus": [H100]},
        "-1",
        ("warn", {"visible_devices": "warn"}, {"visible_devices": "'-1' matches no GPU"}, None),
    ),
    "mig-enabled-none-selected": (
        "13.0",
        {**NEW_DRIVER, "gpus": [MIG_A100]},
        None,
        (
            "fail",
            {"mig": "fail"},
            {"mig": "CUDA_VISIBLE_DEVICES=MIG-5f1c0000-0000-0000-0000-000000000001"},
            "13.0",
        ),
    ),
    "mig-device-selected": (
        "13.0",
        {**NEW_DRIVER, "gpus": [MIG_A100]},
        "MIG-5f1c0000-0000-0000-0000-000000000001",
        ("pass", {"mig": "pass", "visible_devices": "pass"}, {"mig": "MIG device selected"}, "13.0"),
    ),
    "mig-change-pending": (
        "13.0",
        {**NEW_DRIVER, "gpus": [{**A100, "mig": (0, 1)}]},
        None,
        ("warn", {"mig": "warn"}, {"mig": "pending"}, "13.0"),
    ),
    "compute-mode-prohibited": (
        "13.0",
        {**NEW_DRIVER, "gpus": [{**H100, "compute_mode": 2}]},
        None,
        ("fail", {"compute_mode": "fail"}, {"compute_mode": "Prohibited"}, "13.0"),
    ),
    "compute-mode-exclusive": (
        "13.0",
        {**NEW_DRIVER, "gpus": [{**H100, "compute_mode": 3}]},
        None,
        ("warn", {"compute_mode": "warn"}, {"compute_mode": "Exclusive"}, "13.0"),
    ),
    "cpu-build-on-gpu-machine": (
        "cpu",
        {**NEW_DRIVER, "gpus": [H100]},
        None,
        ("pass", {"nvml": "pass"}, {"nvml": "1 GPU via nvml"}, "13.0"),
    ),
}

# id: (build, scenario or None, CUDA_VISIBLE_DEVICES or None, NPROC, (processes status, message text))
PROCESS_SCENARIOS = {
    "two-h100-three-processes": (
        "13.0",
        {**NEW_DRIVER, "gpus": [H100, H100_B]},
        None,
        3,
        ("fail", "NPROC=3 but 2 GPUs are visible: one process per GPU; use NPROC=2 or fewer, or device=cpu"),
    ),
    "visible-devices-hide-one": (
        "13.0",
        {**NEW_DRIVER, "gpus": [H100, H100_B]},
        "0",
        2,
        ("fail", "NPROC=2 but 1 GPU is visible (CUDA_VISIBLE_DEVICES=0): one process per GPU; use NPROC=1"),
    ),
    "four-gpus-two-processes": (
        "13.0",
        {**NEW_DRIVER, "gpus": [A100] * 4},
        None,
        2,
        ("pass", "2 processes on 2 of 4 visible GPUs (NCCL); peer-to-peer access is not required"),
    ),
    "mixed-models": (
        "13.0",
        {**NEW_DRIVER, "gpus": [H100, A100]},
        None,
        2,
        ("warn", "mixed models (NVIDIA A100-SXM4-40GB, NVIDIA H100 80GB HBM3): the slowest GPU"),
    ),
    "mig-one-device-per-process": (
        "13.0",
        {**NEW_DRIVER, "gpus": [MIG_A100]},
        "MIG-5f1c0000-0000-0000-0000-000000000001",
        2,
        ("fail", "MIG-5f1c0000-0000-0000-0000-000000000001); CUDA shows a process one MIG device"),
    ),
    "no-driver-gloo": (
        "13.0",
        None,
        None,
        2,
        ("pass", "no GPU found: 2 processes will use gloo on the CPU"),
    ),
    "hidden-gpus-gloo": (
        "13.0",
        {**NEW_DRIVER, "gpus": [H100]},
        "",
        2,
        ("pass", "no GPU visible (CUDA_VISIBLE_DEVICES=''): 2 processes will use gloo on the CPU"),
    ),
    "cpu-build-gloo": (
        "cpu",
        {**NEW_DRIVER, "gpus": [H100, H100_B]},
        None,
        4,
        ("pass", "CPU build: 4 processes will use gloo on the CPU"),
    ),
}

RUN_CHECKS = """
import json, sys
from {package}.gpu.checks import run_checks
from {package}.gpu.report import to_json
print(json.dumps(to_json(run_checks(sys.argv[1], include_torch=False))))
"""

RUN_PROCESSES = """
import json, sys
from {package}.gpu.checks import process_problem, run_checks
from {package}.gpu.report import to_json
build, nproc = sys.argv[1], int(sys.argv[2])
report = to_json(run_checks(build, include_torch=False, nproc=nproc))
print(json.dumps({{"report": report, "problem": process_problem(build, nproc)}}))
"""


RUN_FOR_RELEASE = """
import json, sys
from {package}.gpu.checks import run_checks
from {package}.gpu.report import to_json
print(json.dumps(to_json(run_checks(sys.argv[1], include_torch=False, torch_version=sys.argv[2] or None))))
"""

# id: (build, torch version, or "" for the installed one, GPU, driver, {check id: (status, text)},
# recommendation). Each release's own builds decide: 2.15 dropped cu126 (pre-Turing GPUs).
RELEASE_SCENARIOS = {
    "12.6-dropped-by-2.15": (
        "12.6",
        "2.15.0",
        H100,
        NEW_DRIVER,
        {
            "release": (
                "fail",
                "torch 2.15.0 publishes no cu126 wheels (13.2, 13.0, cpu): `make variant "
                "CUDA=13.2`, or `make upgrade-torch VERSION=2.14.1`",
            )
        },
        "13.2",
    ),
    "pascal-on-2.14-takes-12.6": (
        "13.0",
        "2.14.1",
        P100,
        DRIVER_535,
        {"arch": ("fail", "use cuda_version 12.6")},
        "12.6",
    ),
    "pascal-on-2.15-has-no-build": (
        "13.0",
        "2.15.0",
        P100,
        NEW_DRIVER,
        {"arch": ("fail", "no wheel build of this project supports it")},
        None,
    ),
    "13.2-on-2.15": ("13.2", "2.15.0", H100, NEW_DRIVER, {"arch": ("pass", "cu132 wheels")}, "13.2"),
    "installed-2.13-has-no-13.2": (
        "13.2",
        "",
        H100,
        NEW_DRIVER,
        {"release": ("fail", "torch 2.13.0+cpu publishes no cu132 wheels")},
        "13.0",
    ),
}


@pytest.mark.parametrize(
    ("build", "torch", "gpu", "driver", "expected", "recommendation"),
    RELEASE_SCENARIOS.values(),
    ids=RELEASE_SCENARIOS.keys(),
)
def test_each_release_has_its_own_builds(
    gpu_project, project_python, nvml_stub, tmp_path, build, torch, gpu, driver, expected, recommendation
):
    """The release checked is the installed torch's unless named (the project env has 2.13.0)."""
    env = machine_env(tmp_path, nvml_stub, {**driver, "gpus": [gpu]}, None)
    report = run_script(gpu_project, project_python, env, RUN_FOR_RELEASE, build, torch)
    checks = {c["id"]: c for c in report["checks"]}
    for check_id, (status, text) in expected.items():
        assert checks[check_id]["status"] == status and text in checks[check_id]["message"], checks
    assert report["recommended_cuda_version"] == recommendation
    assert ("release" in checks) == ("release" in expected)


@pytest.fixture(scope="module")
def gpu_project(tmp_path_factory) -> Path:
    return bake_ok(tmp_path_factory.mktemp("gpu"), cuda_version="13.0", gpu_check="skip")


def machine_env(tmp_path, nvml_stub, scenario, visible) -> dict[str, str]:
    """An environment in which pynvml finds the described machine (or, with None, no driver)."""
    if scenario is None:
        env = {**os.environ, "LD_LIBRARY_PATH": str(tmp_path)}  # an empty folder: the real no-driver path
    else:
        env = stub_env(nvml_stub, write_scenario(tmp_path / "scenario", **scenario))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("CUDA_DEVICE_ORDER", None)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    env["PYTHONPATH"] = "src"
    return env


def run_script(project, python, env, script, *args):
    """A script of the baked package's code in the project's interpreter; its JSON output."""
    code = script.format(package="digit_classifier")
    out = subprocess.run(
        [str(python), "-c", code, *args], cwd=project, env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


@pytest.mark.parametrize(
    ("build", "scenario", "visible", "expected"), SCENARIOS.values(), ids=SCENARIOS.keys()
)
def test_scenario(gpu_project, project_python, nvml_stub, tmp_path, build, scenario, visible, expected):
    status, statuses, messages, recommendation = expected
    env = machine_env(tmp_path, nvml_stub, scenario, visible)
    report = run_script(gpu_project, project_python, env, RUN_CHECKS, build)
    checks = {c["id"]: c for c in report["checks"]}
    assert report["status"] == status, checks
    for check_id, check_status in statuses.items():
        assert checks[check_id]["status"] == check_status, checks[check_id]
    for check_id, text in messages.items():
        assert text in checks[check_id]["message"]
    assert report["recommended_cuda_version"] == recommendation
    assert all("\n" not in c["message"] for c in report["checks"])
    if scenario and scenario.get("gpus") and "init_error" not in scenario:
        assert [g["name"] for g in report["gpus"]] == [g["name"] for g in scenario["gpus"]]
        assert report["driver_version"] == scenario["driver"]
        assert report["cuda_driver_version"] == scenario["cuda"]
        first = report["gpus"][0]
        assert first["memory_total_mib"] == scenario["gpus"][0]["memory_mib"]
        assert first["compute_capability"] == "{}.{}".format(*scenario["gpus"][0]["cc"])


@pytest.mark.parametrize(
    ("build", "scenario", "visible", "nproc", "expected"),
    PROCESS_SCENARIOS.values(),
    ids=PROCESS_SCENARIOS.keys(),
)
def test_process_count(
    gpu_project, project_python, nvml_stub, tmp_path, build, scenario, visible, nproc, expected
):
    """NPROC against the GPUs this process sees: the report's check and the launcher's answer agree."""
    status, text = expected
    env = machine_env(tmp_path, nvml_stub, scenario, visible)
    result = run_script(gpu_project, project_python, env, RUN_PROCESSES, build, str(nproc))
    (check,) = [c for c in result["report"]["checks"] if c["id"] == "processes"]
    assert check["status"] == status, check
    assert text in check["message"] and "\n" not in check["message"]
    assert result["problem"] == (check["message"] if status == "fail" else None)


def gpu_check(project, python, env, *args):
    return subprocess.run(
        [str(python), "-m", "digit_classifier", "gpu-check", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def stdlib_gpu_check(project, python, env, *args):
    """`python -m <pkg>.gpu`: the same checker without importing torch (what the launcher runs)."""
    command = [str(python), "-m", "digit_classifier.gpu", *args]
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)


def test_cli_json_contract_and_exit_codes(gpu_project, project_python, nvml_stub, tmp_path):
    env = machine_env(tmp_path, nvml_stub, {**NEW_DRIVER, "gpus": [H100]}, None)
    result = gpu_check(gpu_project, project_python, env, "--json", "--cuda", "13.0")
    report = json.loads(result.stdout)
    assert set(report) >= {"status", "checks", "driver_version", "cuda_driver_version", "gpus"}
    assert report["gpus"] == [
        {
            "index": 0,
            "name": H100["name"],
            "uuid": H100["uuid"],
            "memory_total_mib": 81559,
            "compute_capability": "9.0",
        }
    ]
    ids = [c["id"] for c in report["checks"]]
    assert ids[:7] == ["nvml", "driver", "cuda_compat", "arch", "mig", "compute_mode", "visible_devices"]
    assert "torch_build" in ids and "shm" in ids  # the CLI adds the installed torch
    torch_check = next(c for c in report["checks"] if c["id"] == "torch_build")
    assert torch_check["status"] == "fail" and "CPU-only build in a cu130 project" in torch_check["message"]
    assert result.returncode == 1
    assert gpu_check(gpu_project, project_python, env, "--cuda", "cpu").returncode == 0
    warn_env = machine_env(tmp_path, nvml_stub, {**NEW_DRIVER, "gpus": [{**H100, "compute_mode": 3}]}, None)
    assert gpu_check(gpu_project, project_python, warn_env, "--cuda", "cpu").returncode == 0
    result = gpu_check(gpu_project, project_python, env, "--cuda", "11.8")
    assert result.returncode == 2 and "invalid choice: '11.8'" in result.stderr


def test_cli_nproc(gpu_project, project_python, nvml_stub, tmp_path):
    """`gpu-check --nproc N` and the stdlib-only `python -m <pkg>.gpu --nproc N` add the check."""
    env = machine_env(tmp_path, nvml_stub, {**NEW_DRIVER, "gpus": [H100, H100_B]}, None)
    report = json.loads(gpu_check(gpu_project, project_python, env, "--json", "--nproc", "2").stdout)
    assert [c["id"] for c in report["checks"]][6:8] == ["visible_devices", "processes"]
    assert report["checks"][7] == {
        "id": "processes",
        "status": "pass",
        "message": "2 processes on 2 of 2 visible GPUs (NCCL); peer-to-peer access is not required",
    }
    result = stdlib_gpu_check(gpu_project, project_python, env, "--cuda", "13.0", "--nproc", "3")
    (line,) = [line for line in result.stdout.splitlines() if " processes " in line]
    assert result.returncode == 1 and line.split()[:4] == ["FAIL", "processes", "NPROC=3", "but"]
    result = gpu_check(gpu_project, project_python, env, "--nproc", "0")
    assert result.returncode == 2 and "argument --nproc: 0 is not 1 or more" in result.stderr
    result = stdlib_gpu_check(gpu_project, project_python, env, "--nproc", "two")
    assert result.returncode == 2 and "argument --nproc: 'two' is not a whole number" in result.stderr


def test_small_shm_warns_and_strict_fails(gpu_project, project_python, tmp_path):
    """A real 64 MiB /dev/shm (Docker's default), mounted in a private mount namespace."""
    env = machine_env(tmp_path, None, None, None)
    command = [str(project_python), "-m", "digit_classifier", "gpu-check", "--cuda", "cpu"]
    inner = 'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$@"'
    runs = {}
    for extra in ([], ["--strict"]):
        runs[bool(extra)] = subprocess.run(
            ["unshare", "--mount", "sh", "-c", inner, "sh", *command, *extra],
            cwd=gpu_project,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    if "mount" in runs[False].stderr or "unshare" in runs[False].stderr:
        pytest.skip(f"cannot mount a private /dev/shm here: {runs[False].stderr.strip()}")
    assert runs[False].returncode == 0, runs[False].stdout + runs[False].stderr
    assert (
        "WARN  shm" in runs[False].stdout
        and "64 MiB" in runs[False].stdout
        and "shm_size" in runs[False].stdout
    )
    assert runs[True].returncode == 1


def test_human_output_names_the_fix(gpu_project, project_python, nvml_stub, tmp_path):
    env = machine_env(tmp_path, nvml_stub, {**NEW_DRIVER, "gpus": [P100]}, None)
    result = gpu_check(gpu_project, project_python, env, "--cuda", "13.0")
    assert result.returncode == 1
    assert "GPU preflight for the cu130 build: FAIL" in result.stdout
    assert "FAIL  arch" in result.stdout
    assert "This machine fits cuda_version 12.6: `make variant CUDA=12.6`" in result.stdout
    assert "\033[" not in result.stdout, "no colour when stdout is not a terminal"


def test_only_a_build_problem_is_blamed_on_the_build(gpu_project, project_python, nvml_stub, tmp_path):
    """A variable that hides the GPU by mistake fails as itself; the build that fits is not doubted.
    A GPU no build supports still says so."""
    env = machine_env(tmp_path, nvml_stub, {**NEW_DRIVER, "gpus": [H100]}, "GPU-ffff")
    result = gpu_check(gpu_project, project_python, env, "--cuda", "13.0")
    assert result.returncode == 1 and "FAIL  visible_devices" in result.stdout, result.stdout
    assert "wheel build" not in result.stdout and "PASS  driver" in result.stdout, result.stdout
    env = machine_env(tmp_path, nvml_stub, {**NEW_DRIVER, "gpus": [ORIN]}, None)
    result = gpu_check(gpu_project, project_python, env, "--cuda", "13.0")
    assert result.returncode == 1 and "No wheel build of this project fits" in result.stdout, result.stdout


def test_project_build_comes_from_env_yml(gpu_project, project_python, nvml_stub, tmp_path):
    env = machine_env(tmp_path, nvml_stub, {**NEW_DRIVER, "gpus": [H100]}, None)
    report = json.loads(gpu_check(gpu_project, project_python, env, "--json").stdout)
    assert report["build"] == "cu130"
    result = gpu_check(tmp_path, project_python, {**env, "PYTHONPATH": str(gpu_project / "src")})
    assert result.returncode == 2 and "pass --cuda" in result.stderr


def test_container_toolkit_check(gpu_project, project_python, nvml_stub, tmp_path):
    env = machine_env(tmp_path, nvml_stub, {**NEW_DRIVER, "gpus": [H100]}, None)
    env["PATH"] = "/usr/bin:/bin"
    report = json.loads(gpu_check(gpu_project, project_python, env, "--json", "--docker").stdout)
    toolkit = next(c for c in report["checks"] if c["id"] == "container_toolkit")
    if toolkit["status"] == "pass":
        pytest.skip(f"this machine has the toolkit: {toolkit['message']}")
    assert toolkit["status"] == "fail" and "could not select device driver" in toolkit["message"]
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-ctk").write_text("#!/bin/sh\n")
    (fake_bin / "nvidia-ctk").chmod(0o755)
    env["PATH"] = f"{fake_bin}:/usr/bin:/bin"
    report = json.loads(gpu_check(gpu_project, project_python, env, "--json", "--docker").stdout)
    toolkit = next(c for c in report["checks"] if c["id"] == "container_toolkit")
    assert toolkit["status"] == "pass" and "nvidia-ctk on PATH" in toolkit["message"]


def test_training_fails_fast_on_an_unusable_gpu(gpu_project, project_python, nvml_stub, tmp_path):
    env = machine_env(tmp_path, nvml_stub, {**NEW_DRIVER, "gpus": [P100]}, None)
    result = subprocess.run(
        [str(project_python), "-m", "digit_classifier", "train", "device=cuda"],
        cwd=gpu_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert (
        "device 'cuda' requested but CUDA is not usable" in line and "no kernels in the cu130 wheels" in line
    )
    assert not list((gpu_project / "runs").glob("2*")), "nothing written before the check"


def test_more_processes_than_gpus_fail_before_any_process_starts(
    gpu_project, project_python, nvml_stub, tmp_path
):
    env = machine_env(tmp_path, nvml_stub, {**NEW_DRIVER, "gpus": [H100, H100_B]}, None)
    command = [str(project_python), "-m", "digit_classifier", "train", "--nproc", "4", "device=cuda"]
    result = subprocess.run(command, cwd=gpu_project, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "NPROC=4 but 2 GPUs are visible" in line and "NPROC=2 or fewer" in line
    assert not list((gpu_project / "runs").glob("2*")), "nothing written before the check"


@pytest.mark.parametrize("launch", [[], ["--nproc", "2"]], ids=["one-process", "two-processes"])
def test_auto_device_falls_back_to_cpu_with_one_warning(gpu_project, project_python, tmp_path, launch):
    env = machine_env(tmp_path, None, None, None)
    result = subprocess.run(
        [
            str(project_python),
            "-m",
            "digit_classifier",
            "train",
            *launch,
            "--no-progress",
            "optim.epochs=1",
            f"output.runs_dir={tmp_path / 'runs'}",
            f"output.model_path={tmp_path / 'model.pt'}",
        ],
        cwd=gpu_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "running on the CPU" in warnings[0]
    assert "on cpu" in result.stdout


NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *--query-gpu*) echo "0, Tesla P100-PCIE-16GB, GPU-5a5a, 16384, 6.0, [N/A], [N/A], Default, 580.65.06" ;;
  *) echo "| NVIDIA-SMI 580.65.06   Driver Version: 580.65.06   CUDA Version: 13.0 |" ;;
esac
"""


def fake_nvidia_smi(tmp_path) -> dict[str, str]:
    folder = tmp_path / "smi"
    folder.mkdir()
    (folder / "nvidia-smi").write_text(NVIDIA_SMI)
    (folder / "nvidia-smi").chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def test_hook_warn_mode_reports_and_keeps_the_project(tmp_path):
    result = bake(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "GPU preflight for the cu130 build: WARN" in result.stdout
    assert "nvidia-ml-py is not installed in this Python" in result.stdout  # cookiecutter's Python here
    assert "make gpu-check" in result.stdout


def test_hook_uses_nvidia_smi_without_bindings_and_strict_aborts(tmp_path):
    env = fake_nvidia_smi(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    result = bake(out, env=env, gpu_check="strict")
    assert result.returncode != 0
    assert "Tesla P100-PCIE-16GB (sm_60): no kernels in the cu130 wheels" in result.stdout
    assert "gpu_check=strict" in result.stderr
    assert list(out.iterdir()) == [], "a strict failure leaves nothing behind"
    result = bake(out, env=env, gpu_check="strict", cuda_version="12.6")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GPU preflight for the cu126 build: PASS" in result.stdout


def test_hook_skip_mode(tmp_path):
    result = bake(tmp_path, gpu_check="skip")
    assert result.returncode == 0
    assert "GPU check skipped (gpu_check=skip)" in result.stdout
    assert "GPU preflight" not in result.stdout


def test_hook_strict_treats_a_warning_as_failure(tmp_path):
    """No driver to ask is a warning for a GPU build: enough to stop a strict bake, not a CPU one."""
    result = bake(tmp_path, gpu_check="strict")
    assert result.returncode != 0
    assert "error: GPU check warn and gpu_check=strict" in result.stderr
    assert list(tmp_path.iterdir()) == []
    result = bake(tmp_path, gpu_check="strict", cuda_version="cpu")
    assert result.returncode == 0, result.stderr
    assert "GPU preflight for the cpu build: PASS" in result.stdout
