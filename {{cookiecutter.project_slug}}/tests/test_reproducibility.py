"""Reproducible, resumable training, checked with real training processes (slow)."""

import importlib.util
import json
import os
import pickle
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from {{ cookiecutter.package_name }}.checkpoint import read
from {{ cookiecutter.package_name }}.reproducibility import data_fingerprint, file_sha256, git_state

from .conftest import PROJECT_ROOT, TASKS

pytestmark = pytest.mark.slow
# Enough epochs that a run is still going when a test picks its moment from the checkpoints written.
EPOCHS = {"digits": 3, "breast_cancer": 12}


def epochs_for(task_name: str) -> str:
    return f"optim.epochs={EPOCHS.get(task_name, 12)}"


def command(runs_dir, *args):
    return [
        sys.executable,
        "-m",
        "{{ cookiecutter.package_name }}",
        "train",
        "--no-progress",
        f"output.runs_dir={runs_dir}",
        f"output.model_path={runs_dir}/model.pt",
        *args,
    ]


def run_env():
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}


def train(runs_dir, *args, check=True):
    result = subprocess.run(
        command(runs_dir, *args), cwd=PROJECT_ROOT, env=run_env(), capture_output=True, text=True, timeout=600
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def resume(runs_dir, *args, target="auto"):
    """What people type: the first command again, plus RESUME (the overrides must agree with the run)."""
    return train(runs_dir, "--resume", str(target), *args, check=False)


def final_weights(runs_dir) -> str:
    (metrics,) = Path(runs_dir).glob("*/metrics.json")
    return json.loads(metrics.read_text())["weights_sha256"]


def start(runs_dir, *args, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        command(runs_dir, *args),
        cwd=PROJECT_ROOT,
        env=env or run_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_epoch(runs_dir, process, epoch: int, timeout=300) -> None:
    """Until a checkpoint of `epoch` completed epochs (or later) exists: the moment comes from the run's
    own progress, never from the clock, so a fast task cannot slip past it."""
    deadline = time.monotonic() + timeout
    while (
        max((int(p.name.split("-")[1]) for p in Path(runs_dir).glob("*/checkpoints/*.pt")), default=-1)
        < epoch
    ):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
        time.sleep(0.005)


@pytest.fixture(scope="module")
def reference(task_name, tmp_path_factory):
    """An uninterrupted run: the weights every interrupted-and-resumed run must reproduce."""
    runs = tmp_path_factory.mktemp(f"reference-{task_name}")
    train(runs, f"task={task_name}", epochs_for(task_name), "seed=3")
    return final_weights(runs)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, task_name, reference):
    train(tmp_path / "again", f"task={task_name}", epochs_for(task_name), "seed=3")
    assert final_weights(tmp_path / "again") == reference
    train(tmp_path / "other", f"task={task_name}", epochs_for(task_name), "seed=4")
    assert final_weights(tmp_path / "other") != reference


def test_sigkill_at_a_random_point_then_resume_gives_the_same_weights(tmp_path, task_name, reference):
    args = (f"task={task_name}", epochs_for(task_name), "seed=3")
    process = start(tmp_path, *args)
    wait_for_epoch(tmp_path, process, random.randrange(1, EPOCHS.get(task_name, 12) - 1))
    process.kill()
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    result = resume(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert final_weights(tmp_path) == reference


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, task_name, reference, signum):
    args = (f"task={task_name}", epochs_for(task_name), "seed=3")
    process = start(tmp_path, *args)
    wait_for_epoch(tmp_path, process, 1)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum
    (line,) = stderr.strip().splitlines()
    assert f"training stopped by {signum.name}" in line and "make train RESUME=auto" in line
    assert "Traceback" not in stderr
    refused = resume(tmp_path, *args[:-1], "seed=4")  # an override that contradicts the run
    assert refused.returncode == 2 and "seed=4 differs from the resumed run's seed=3" in refused.stderr
    result = resume(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert final_weights(tmp_path) == reference


def test_a_stopped_run_resumes_with_another_precision(tmp_path):
    """Resuming on a GPU without bf16, say: precision may change (the weights then differ)."""
    args = (f"task={TASKS[0]}", epochs_for(TASKS[0]), "seed=3")
    process = start(tmp_path, *args)
    wait_for_epoch(tmp_path, process, 1)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    result = resume(tmp_path, *args, "precision=bf16")
    assert result.returncode == 0, result.stderr
    (metrics,) = tmp_path.glob("*/metrics.json")
    assert json.loads(metrics.read_text())["precision"] == "bf16"


def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, task_name, reference):
    args = (f"task={task_name}", epochs_for(task_name), "seed=3")
    process = start(tmp_path, *args)
    wait_for_epoch(tmp_path, process, 2)
    process.kill()
    process.wait()
    newest = sorted(tmp_path.glob("*/checkpoints/*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # a write cut short
    explicit = resume(tmp_path, target=newest)
    assert explicit.returncode == 1 and "not a readable checkpoint" in explicit.stderr
    assert explicit.stderr.strip().count("\n") == 0
    result = resume(tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"warning: skipping '{newest}'" in result.stderr
    assert final_weights(tmp_path) == reference


def manifest_of(runs_dir) -> dict:
    (path,) = Path(runs_dir).glob("*/manifest.json")
    return json.loads(path.read_text())


def test_sigkill_after_the_last_epoch_then_resume_finishes_the_run(tmp_path):
    """Killed while scoring or promoting: RESUME=auto scores and promotes, and trains nothing again."""
    task_name = TASKS[0]
    args, epochs = (f"task={task_name}", epochs_for(task_name), "seed=3"), EPOCHS.get(task_name, 12)
    process = start(tmp_path, *args)
    wait_for_epoch(tmp_path, process, epochs)
    process.kill()
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert manifest_of(tmp_path)["status"] == "running"
    result = resume(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert f"(all {epochs} epochs trained: scoring and promoting its model)" in result.stderr
    manifest = manifest_of(tmp_path)
    assert manifest["status"] == "complete" and manifest["metrics"]["epochs"] == epochs
    again = tmp_path / "uninterrupted"
    train(again, *args)
    assert final_weights(tmp_path) == final_weights(again)
    assert read(tmp_path / "model.pt")["run"] == manifest["run_id"]


def test_sigint_after_the_last_epoch_lets_the_run_finish(tmp_path):
    args, epochs = (f"task={TASKS[0]}", epochs_for(TASKS[0]), "seed=3"), EPOCHS.get(TASKS[0], 12)
    process = start(tmp_path, *args)
    wait_for_epoch(tmp_path, process, epochs)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "finishing the run first" in stderr and "Traceback" not in stderr
    assert manifest_of(tmp_path)["status"] == "complete"
    assert read(tmp_path / "model.pt")["run"] == manifest_of(tmp_path)["run_id"]


def test_of_overlapping_trainings_the_one_started_last_keeps_the_model(tmp_path):
    """Both report truthfully; the other run's model stays in its run directory."""
    task = f"task={TASKS[0]}"
    first = start(tmp_path, task, epochs_for(TASKS[0]), "seed=3")
    wait_for_epoch(tmp_path, first, 1)
    first.send_signal(signal.SIGSTOP)  # paused, so the second, started later, finishes first
    second = train(tmp_path, task, "optim.epochs=1", "seed=4")
    first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    first_run, second_run = sorted(p for p in tmp_path.iterdir() if p.is_dir())  # names sort by start
    model = tmp_path / "model.pt"
    assert f"model {model}" in second.stdout
    assert f"model {first_run / 'checkpoint.pt'}" in stdout
    assert f"note: not promoted to {model}: run {second_run.name}, started after this one" in stderr
    assert read(model)["run"] == second_run.name
    promoted = [
        json.loads((run / "manifest.json").read_text())["promoted"] for run in (first_run, second_run)
    ]
    assert promoted == [False, True]
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (model, first_run / "checkpoint.pt", first_run / "manifest.json", first_run / "config.yaml"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


class Exploit:
    """A pickle that runs a command when unpickled: what weights_only loading must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_checkpoint_is_refused_not_run(tmp_path):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save(
        {"format": 1, "kind": "training", "model_state": Exploit(marker)},
        evil,
        pickle_protocol=pickle.HIGHEST_PROTOCOL,
    )
    for args in (
        ["train", "--resume", str(evil)],
        ["evaluate", "--model", str(evil)],
        ["infer", "--model", str(evil), "x.npy"],
    ):
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
        result = subprocess.run(
            [sys.executable, "-m", "{{ cookiecutter.package_name }}", *args],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1 and "not a readable checkpoint" in result.stderr, result.stderr
        assert not marker.exists(), "the payload ran"


def test_manifest_records_the_run(trained, task_name, splits):
    manifest = json.loads((trained.run_dir / "manifest.json").read_text())
    metrics = json.loads((trained.run_dir / "metrics.json").read_text())
    assert manifest["status"] == "complete" and manifest["started"] <= manifest["finished"]
    assert manifest["seed"] == manifest["config"]["seed"] == 42 and manifest["deterministic"] is True
    assert manifest["metrics"]["test_accuracy"] == metrics["test_accuracy"]
    assert manifest["metrics"]["weights_sha256"] == metrics["weights_sha256"]
    env = manifest["environment"]
    assert env["python"] == platform.python_version() and env["torch"] == torch.__version__
    assert env["cuda"] == torch.version.cuda and env["hostname"]
    assert env["command"][1:] == sys.argv[1:]  # this process (pytest) trained the fixture
    assert {"requirements/prod.txt", "requirements/dev.txt"} <= env["locks"].keys()
    for name, digest in env["locks"].items():
        assert digest == file_sha256(PROJECT_ROOT / name)
    assert set(env["git"]) == {"commit", "dirty", "diff_sha256"}
    assert manifest["config"]["task"] == task_name
    arrays = [a for s in (splits.train, splits.val, splits.test) for a in (s.inputs, s.labels)]
    assert manifest["data_sha256"] == data_fingerprint(*arrays)


def test_git_state_reports_commit_dirt_and_diff(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None, "diff_sha256": None}
    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.txt").write_text("one\n")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    clean = git_state(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False and clean["diff_sha256"] is None
    (tmp_path / "a.txt").write_text("two\n")
    first = git_state(tmp_path)
    (tmp_path / "a.txt").write_text("three\n")
    second = git_state(tmp_path)
    assert first["dirty"] and second["dirty"] and first["diff_sha256"] != second["diff_sha256"]


def test_runs_lists_and_compares(tmp_path):
    train(tmp_path, "optim.epochs=1", "seed=1")
    train(tmp_path, "optim.epochs=1", "seed=2")
    first, second = sorted(p.name for p in tmp_path.glob("2*"))
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    run = [sys.executable, "-m", "{{ cookiecutter.package_name }}", "runs", "--runs-dir", str(tmp_path)]
    listing = subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout
    assert first in listing and second in listing and "complete" in listing
    diff = subprocess.run(
        [*run, "--compare", first, second], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "seed: 1 -> 2" in diff and "config.seed: 1 -> 2" in diff


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


UV_LOCK = """\
# This file was autogenerated by uv via the following command:
#    make lock
pip==26.3 \\
    --hash=sha256:aa
    # via pip-tools
pip-tools==7.6.2 \\
    --hash=sha256:bb
    # via -r requirements/dev.in
setuptools==84.2.1 \\
    --hash=sha256:cc
    # via
    #   -r requirements/dev.in
    #   pip-tools
uvloop==0.23.0 \\
    --hash=sha256:dd
    # via -r requirements/dev.in
"""


DATE = "2026-12-07T00:00:00Z"


def test_finish_gives_uvs_lock_pip_compiles_layout(tmp_path):
    """The header's shape, the .in's markers where pip-compile writes them, the unsafe packages last,
    the date under the header and the input's sha256; a lock pip-compile wrote is only re-stamped."""
    locktool = load_tool("locktool")
    source, lock = tmp_path / "dev.in", tmp_path / "dev.txt"
    (tmp_path / "serve.in").write_text("uvloop>=0.19;sys_platform!='win32'  # fast loop\n")
    source.write_text("pip-tools>=7\nsetuptools\n-r serve.in\n")
    lock.write_text(UV_LOCK)
    locktool.finish(lock, [source], DATE)
    python = ".".join(map(str, sys.version_info[:2]))
    digest = file_sha256(source)
    lines = [
        "#",
        f"# This file was autogenerated by uv (pip-compile's format) with Python {python}",
        "# by the following command:",
        "#",
        "#    make lock",
        "#",
        f"# resolved as of {DATE} (requirements/lock-date)",
        *("pip-tools==7.6.2 \\", "    --hash=sha256:bb", "    # via -r requirements/dev.in"),
        *('uvloop==0.23.0 ; sys_platform != "win32" \\', "    --hash=sha256:dd"),
        "    # via -r requirements/dev.in",
        "",
        "# The following packages are considered to be unsafe in a requirements file:",
        *("pip==26.3 \\", "    --hash=sha256:aa", "    # via pip-tools"),
        *("setuptools==84.2.1 \\", "    --hash=sha256:cc", "    # via", "    #   -r requirements/dev.in"),
        "    #   pip-tools",
        f"# input {source} sha256: {digest}",
    ]
    assert lock.read_text() == "\n".join(lines) + "\n"
    finished = lock.read_text()
    source.write_text("pip-tools>=7\n")
    locktool.finish(lock, [source], DATE)  # now pip-compile's layout: only re-stamped
    assert lock.read_text() == finished.replace(digest, file_sha256(source))


def locked_project(root: Path, locktool, prod: str) -> Path:
    """A project's requirements/ holding prod.in and its stamped lock (and the joint one)."""
    requirements = root / "requirements"
    requirements.mkdir(exist_ok=True)
    (requirements / "lock-date").write_text(f"# the date\n{DATE}\n")
    (requirements / "prod.in").write_text("numpy\n")
    for name, text in (("prod.txt", prod), ("joint.txt", "")):
        (requirements / name).write_text(text)
        locktool.finish(requirements / name, [Path("requirements/prod.in")], DATE)
    return requirements


def test_check_lock_names_the_culprit(tmp_path, capsys, monkeypatch):
    """Against this very interpreter's packages: a stale lock input, a wrong pin, a missing package."""
    import importlib.metadata

    envtool, locktool = load_tool("envtool"), load_tool("locktool")
    monkeypatch.chdir(tmp_path)
    installed = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()}
    pinned = "".join(f"{name}=={version}\n" for name, version in installed.items())
    requirements = locked_project(tmp_path, locktool, pinned)
    assert envtool.check_lock(tmp_path) == 0
    (requirements / "prod.in").write_text("numpy\ntqdm\n")
    assert envtool.check_lock(tmp_path) == 1
    assert "requirements/prod.in changed after requirements/prod.txt was locked" in capsys.readouterr().err
    numpy = next(name for name in installed if name.lower() == "numpy")
    requirements = locked_project(
        tmp_path, locktool, pinned.replace(f"{numpy}=={installed[numpy]}", f"{numpy}==0.0.1") + "ghost==1.0\n"
    )
    assert envtool.check_lock(tmp_path) == 1
    err = capsys.readouterr().err
    assert f"numpy {installed[numpy]} is installed but the lock pins 0.0.1: run `make sync`" in err
    assert "ghost==1.0 is locked but not installed" in err
    # the dev image's environment is rebuilt, never synced in place
    assert envtool.check_lock(tmp_path, image_env=True) == 1
    assert "ghost==1.0 is locked but not installed: rebuild the dev image" in capsys.readouterr().err


def test_engine_commands_date_every_resolution_and_exempt_torch(tmp_path):
    """uv: --exclude-newer with torch exempt, and the torch index after pip's own, exempt from the date
    (it publishes no upload times); pip-tools: pip's --uploaded-prior-to and the torch index."""
    locktool = load_tool("locktool")
    index = "https://download.pytorch.org/whl/cpu"
    uv = locktool.Engine("uv", "uv", index, DATE, upgrade=False)
    command = uv.command([Path("requirements/prod.in")], Path("out.txt"), True, None, tmp_path)
    assert command[command.index("--exclude-newer") + 1] == DATE
    assert command[command.index("--exclude-newer-package") + 1] == "torch=false"
    config = Path(command[command.index("--config-file") + 1]).read_text()
    assert f'url = "{index}"' in config and "exclude-newer = false" in config
    pip_tools = locktool.Engine("pip-tools", "uv", index, DATE, upgrade=True)
    command = pip_tools.command([Path("a.in")], Path("a.txt"), False, Path("joint.txt"), tmp_path)
    assert command[command.index("--uploaded-prior-to") + 1] == DATE
    assert command[command.index("--extra-index-url") + 1] == index
    assert "--upgrade" in command and command[command.index("--constraint") + 1] == "joint.txt"


def test_git_hooks_run_the_environments_own_tools(tmp_path):
    """`envtool exec` runs ENV_DIR's program (the dev image sets ENV_DIR), and names the fix when the
    environment lacks it."""
    tool = tmp_path / "bin" / "hello"
    tool.parent.mkdir()
    tool.write_text('#!/bin/sh\necho hello "$@"\n')
    tool.chmod(0o755)
    run = [sys.executable, str(PROJECT_ROOT / "tools" / "envtool.py"), "exec"]
    env = {**os.environ, "ENV_DIR": str(tmp_path)}
    ran = subprocess.run([*run, "hello", "a.ipynb"], env=env, capture_output=True, text=True)
    assert (ran.returncode, ran.stdout) == (0, "hello a.ipynb\n")
    missing = subprocess.run([*run, "nbstripout"], env=env, capture_output=True, text=True)
    assert missing.returncode == 1
    assert missing.stderr.startswith(f"error: {tmp_path}/bin/nbstripout not found: run `make env` first")
