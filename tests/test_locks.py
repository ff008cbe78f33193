"""Locks that hold over time: the tested locks a bake ships with, one date every resolution is made as
of, one resolution for every group, and optional extras off the default path. Real bakes, real uv,
and real indexes: PyPI, and package indexes on loopback (tests/local_index.py) with upload times."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .conftest import COOKIECUTTER_JSON, TEMPLATE, bake, bake_ok, run_make
from .local_index import Release, serve_index

sys.path.insert(0, str(TEMPLATE / "hooks"))
from locks import LOCKS, lock_set_name, project_locktool, ship_locks
from locks import answers_of as lock_set_answers

SHIPPED = sorted(path for path in (TEMPLATE / LOCKS).iterdir() if path.is_dir())
PROJECT_LOCKS = ("joint.txt", "prod.txt", "dev.txt", "mlflow.txt")


def answers_of(folder: Path) -> dict[str, str]:
    answers = lock_set_answers(folder.name)
    assert answers, f"{folder.name} is not named python<X.Y>-torch<X.Y.Z>-<cpu|cudaX.Y>"
    return answers


def fresh_caches() -> dict[str, str]:
    """The environment of a machine that never downloaded anything: empty uv and pip caches."""
    scratch = tempfile.mkdtemp(prefix="empty-caches-")
    return {**os.environ, "UV_CACHE_DIR": f"{scratch}/uv", "PIP_CACHE_DIR": f"{scratch}/pip"}


def pins(lock: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9._-]+)==([^\s;]+)", lock.read_text(), re.M))


def unlock(project: Path) -> None:
    """A project without its shipped locks: the first make resolves them."""
    for name in PROJECT_LOCKS:
        (project / "requirements" / name).unlink()


def test_the_template_ships_tested_locks_for_the_offline_build():
    names = [folder.name for folder in SHIPPED]
    assert lock_set_name("3.11", "2.13.0", "cpu") in names  # what the suite, make demo and bench bake
    for folder in SHIPPED:
        assert sorted(path.name for path in folder.iterdir()) == sorted(PROJECT_LOCKS), folder


@pytest.mark.parametrize("folder", SHIPPED, ids=[folder.name for folder in SHIPPED])
def test_shipped_locks_are_current(tmp_path, folder):
    """What `make locks` must be run after: an .in edited in the template, or a moved date. The bake
    takes the locks only when they are current, and says so in one line."""
    result = bake(tmp_path, gpu_check="skip", **answers_of(folder))
    assert result.returncode == 0, result.stderr
    (project,) = tmp_path.iterdir()
    problems = project_locktool(project).stale(project)
    assert not problems, f"{folder.relative_to(TEMPLATE)} is stale ({'; '.join(problems)}): run make locks"
    assert "Locks: the template's tested locks for" in result.stdout
    for name in PROJECT_LOCKS:
        assert (project / "requirements" / name).read_bytes() == (folder / name).read_bytes()


def test_answers_without_shipped_locks_resolve_on_first_use_and_say_so(tmp_path):
    # the defaults: torch 2.15.0's CUDA 13.0 build, which only PyTorch's own index serves
    result = bake(tmp_path, gpu_check="skip", torch_version=COOKIECUTTER_JSON["torch_version"])
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("Locks:")]
    assert lines == [
        "Locks: the template ships no tested locks for Python 3.11, torch 2.15.0, build 13.0; the first "
        "make resolves them as of " + project_date(next(tmp_path.iterdir())) + " (requirements/lock-date)."
    ]
    assert sorted(p.name for p in (next(tmp_path.iterdir()) / "requirements").glob("*.txt")) == [
        "bootstrap.txt"
    ]


def project_date(project: Path) -> str:
    return project_locktool(project).read_date(project)


def test_stale_shipped_locks_are_not_copied(tmp_path):
    """A template whose shipped locks predate an edit of an .in: the bake resolves instead, and says
    which file is stale."""
    folder = SHIPPED[0]
    project = bake_ok(tmp_path / "bake", gpu_check="skip", **answers_of(folder))
    unlock(project)
    template = tmp_path / "template"
    shutil.copytree(folder, template / LOCKS / folder.name)
    dev = template / LOCKS / folder.name / "dev.txt"
    stamp = r"(# input requirements/dev\.in sha256: )[0-9a-f]{64}"
    dev.write_text(re.sub(stamp, r"\g<1>" + "0" * 64, dev.read_text()))
    line = ship_locks(project, answers_of(folder), template)
    assert line.startswith(
        f"Locks: the template's locks/{folder.name} is out of date (requirements/dev.in changed"
    )
    assert "the first make resolves them as of" in line
    assert sorted(p.name for p in (project / "requirements").glob("*.txt")) == ["bootstrap.txt"]


def test_staleness_names_the_edited_input_and_the_moved_date(tmp_path):
    project = bake_ok(tmp_path, gpu_check="skip", **answers_of(SHIPPED[0]))

    def stale() -> subprocess.CompletedProcess:
        command = [sys.executable, "tools/locktool.py", "stale"]
        return subprocess.run(command, cwd=project, capture_output=True, text=True, check=False)

    assert stale().returncode == 0
    dev_in, date_file = project / "requirements" / "dev.in", project / "requirements" / "lock-date"
    original = dev_in.read_text()
    dev_in.write_text(original + "rich\n")
    result = stale()
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: requirements/dev.in changed after requirements/dev.txt was locked: run `make lock`",
        "error: requirements/dev.in changed after requirements/joint.txt was locked: run `make lock`",
    ]
    dev_in.write_text(original)
    date = project_date(project)
    date_file.write_text(date_file.read_text().replace(date, "2027-01-01T00:00:00Z"))
    errors = stale().stderr.splitlines()
    assert len(errors) == 5, errors  # the engine's lock and the four project locks
    assert (
        f"error: requirements/prod.txt was resolved as of {date}, but requirements/lock-date says "
        "2027-01-01T00:00:00Z: run `make lock`"
    ) in errors


def minutes_ago(minutes: int) -> str:
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.slow
def test_a_poisoned_release_published_after_the_date_is_never_picked(tmp_path):
    """An index offers a newer tqdm that breaks on import, uploaded after the lock date. The first
    `make train` installs the shipped locks; `make lock` resolves as of the date and keeps the good
    tqdm; an undated resolution over the same sources takes the poison (so this test can fail), and so
    does the deliberate move to today, `make lock UPGRADE=1`."""
    project = bake_ok(tmp_path / "bake", gpu_check="skip", **answers_of(SHIPPED[0]))
    assert minutes_ago(1) > project_date(project)
    shipped = pins(project / "requirements" / "prod.txt")["tqdm"]
    poison = Release("tqdm", "99.0.0", minutes_ago(1), code="raise ImportError('poisoned release')\n")
    with serve_index([poison], tmp_path / "index") as url:
        env = {**fresh_caches(), "PIP_EXTRA_INDEX_URL": url}
        result = run_make(project, "train", "ARGS=--no-progress optim.epochs=1", env=env)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "pip compile" not in result.stdout  # the shipped locks: installed by hash, nothing resolved
        assert run_make(project, "lock", env=env).returncode == 0
        assert pins(project / "requirements" / "prod.txt")["tqdm"] == shipped
        python = str(project / ".venv" / "bin" / "python")
        sources = subprocess.run(
            [python, "tools/locktool.py", "uv-sources"], cwd=project, capture_output=True, text=True, env=env
        ).stdout.split()
        assert url in sources
        undated = [shutil.which("uv"), "pip", "compile", "--quiet", "--python", python]
        undated += [
            "--index-strategy",
            "unsafe-best-match",
            *sources,
            "requirements/prod.in",
            "-o",
            "undated.txt",
        ]
        result = subprocess.run(undated, cwd=project, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        assert pins(project / "undated.txt")["tqdm"] == "99.0.0"
        result = run_make(project, "lock", "UPGRADE=1", env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert pins(project / "requirements" / "prod.txt")["tqdm"] == "99.0.0"
        assert project_date(project) > poison.uploaded  # the date moved to now, and was recorded


GREEDY_INDEX = [  # the newest A needs B==2; the extra needs C, which needs B==1: only A 1.0 fits both
    Release("a", "1.0", "2026-01-01T00:00:00Z", requires=["b>=1"]),
    Release("a", "2.0", "2026-01-02T00:00:00Z", requires=["b==2.0"]),
    Release("b", "1.0", "2026-01-01T00:00:00Z"),
    Release("b", "2.0", "2026-01-02T00:00:00Z"),
    Release("c", "1.0", "2026-01-01T00:00:00Z", requires=["b==1.0"]),
]


@pytest.mark.slow
def test_one_resolution_for_every_group_finds_the_joint_solution(tmp_path):
    """The conflict of 2026-12-07 in miniature: resolved layer by layer (prod first, the extra
    constrained by it) it is unsatisfiable; resolved together, every lock installs into one
    environment with no conflict."""
    project = bake_ok(tmp_path / "bake", gpu_check="skip", **answers_of(SHIPPED[0]))
    unlock(project)
    requirements = project / "requirements"
    for name, text in (("prod", "a\n"), ("dev", "b>=1\n"), ("mlflow", "c\n")):
        (requirements / f"{name}.in").write_text(text)
    with serve_index(GREEDY_INDEX, tmp_path / "index") as url:
        env = {**fresh_caches(), "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": url, "PIP_FIND_LINKS": ""}
        result = run_make(project, "requirements/prod.txt", env=env)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert pins(requirements / "prod.txt") == {"a": "1.0", "b": "1.0"}
        assert pins(requirements / "mlflow.txt") == {"b": "1.0", "c": "1.0"}
        uv = shutil.which("uv")
        together = tmp_path / "together"
        subprocess.run([uv, "venv", "--quiet", str(together)], check=True, env=env)
        install = [uv, "pip", "install", "--quiet", "--python", str(together / "bin" / "python")]
        install += ["--require-hashes", "--index-url", url]
        for name in ("prod", "dev", "mlflow"):
            install += ["-r", str(requirements / f"{name}.txt")]
        subprocess.run(install, check=True, env=env, capture_output=True)
        check = [uv, "pip", "check", "--python", str(together / "bin" / "python")]
        assert subprocess.run(check, env=env, capture_output=True).returncode == 0
        layered = [uv, "pip", "compile", "--quiet", "--index-url", url]
        subprocess.run([*layered, "prod.in", "-o", "greedy-prod.txt"], cwd=requirements, check=True, env=env)
        assert pins(requirements / "greedy-prod.txt") == {"a": "2.0", "b": "2.0"}
        greedy = subprocess.run(
            [*layered, "mlflow.in", "-c", "greedy-prod.txt"], cwd=requirements, capture_output=True, env=env
        )
        assert greedy.returncode != 0  # what the layered locks did: the extra could not be locked


@pytest.mark.slow
def test_an_unresolvable_extra_never_stops_the_default_path(tmp_path):
    """mlflow.in made to conflict with prod.in: `make lock` locks the rest and warns in one line, the
    default `make train` trains, and asking for the extra fails in one line naming it and the conflict."""
    project = bake_ok(tmp_path, gpu_check="skip", **answers_of(SHIPPED[0]))
    mlflow_in = project / "requirements" / "mlflow.in"
    mlflow_in.write_text(mlflow_in.read_text() + "numpy<1.26  # prod.in needs numpy>=1.26\n")
    result = run_make(project, "lock")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "the optional extra mlflow (requirements/mlflow.in)" in warnings[0]
    assert "# unresolvable: " in (project / "requirements" / "mlflow.txt").read_text()
    result = run_make(project, "train", "ARGS=--no-progress optim.epochs=1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert run_make(project, "check-lock").returncode == 0
    result = run_make(project, "sync", "EXTRAS=mlflow")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if not line.startswith("make")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: the extra mlflow (requirements/mlflow.in) cannot be installed: ")
    assert "numpy" in errors[0]


@pytest.mark.slow
def test_resolutions_at_different_times_with_empty_caches_give_the_shipped_locks(tmp_path):
    """Two bakes of the same answers, resolved from scratch a while apart on machines that downloaded
    nothing before: byte-identical locks, and identical to the ones the template ships."""
    folder = SHIPPED[0]
    for attempt in ("first", "second"):
        project = bake_ok(tmp_path / attempt, gpu_check="skip", **answers_of(folder))
        unlock(project)
        result = run_make(project, "requirements/prod.txt", env=fresh_caches())
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        for name in PROJECT_LOCKS:
            assert (project / "requirements" / name).read_text() == (folder / name).read_text(), (
                attempt,
                name,
            )


def test_extras_are_off_the_default_path(tmp_path):
    """The default sync installs prod, dev and the engine; an extra only when asked for, and the
    environment remembers it."""
    project = bake_ok(tmp_path, gpu_check="skip", **answers_of(SHIPPED[0]))
    default = subprocess.run(["make", "-n", "sync"], cwd=project, capture_output=True, text=True).stdout
    assert "requirements/dev.txt" in default and "mlflow.txt" not in default
    asked = subprocess.run(
        ["make", "-n", "sync", "EXTRAS=mlflow"], cwd=project, capture_output=True, text=True
    )
    assert "requirements/mlflow.txt" in asked.stdout and "> .venv/.extras" in asked.stdout
