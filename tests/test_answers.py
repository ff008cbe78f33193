"""The pre-generation hook: every rejection, through the real cookiecutter CLI, and slugification."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml
from answers import dist_key, locked_modules, module_owners, problems, wheel_table

from .conftest import CHOICES, COOKIECUTTER_JSON, INSTALLABLE_TORCH, TEMPLATE, bake, bake_ok, read_jsonc

MAX_NAME = COOKIECUTTER_JSON["_name_max_length"]
PRINTABLE_HINT = "use one line of printable text without double quotes or backslashes"

REJECTIONS = {
    "empty-project-name": ({"project_name": " "}, "project_name ' ' has no letters or digits"),
    "symbols-project-name": ({"project_name": "!!!"}, "project_name '!!!' has no letters or digits"),
    "slug-uppercase": ({"project_slug": "My-Project"}, "project_slug 'My-Project' must be lowercase"),
    "slug-space": ({"project_slug": "my project"}, "project_slug 'my project' must be lowercase"),
    "slug-double-hyphen": ({"project_slug": "a--b"}, "single hyphens"),
    "package-keyword": ({"package_name": "class"}, "is a Python keyword"),
    "package-leading-digit": ({"package_name": "3d_vision"}, "starts with a digit"),
    "package-hyphen": ({"package_name": "my-pkg"}, "contains a hyphen"),
    "package-uppercase": ({"package_name": "MyPkg"}, "has uppercase letters"),
    "package-space": ({"package_name": "my pkg"}, "not a valid Python identifier"),
    "package-empty": ({"package_name": ""}, "package_name is empty"),
    "package-shadows-torch": ({"package_name": "torch"}, "would shadow the module 'torch'"),
    "package-shadows-numpy": ({"package_name": "numpy"}, "would shadow the module 'numpy'"),
    "package-shadows-stdlib-test": ({"package_name": "test"}, "would shadow the module 'test'"),
    "package-shadows-tests": ({"package_name": "tests"}, "would shadow the module 'tests'"),
    "python-too-old": ({"python_version": "3.9"}, "python_version '3.9' is not supported by torch"),
    "python-garbage": ({"python_version": "three"}, "choose one of: 3.11"),
    "cuda-unsupported": ({"cuda_version": "11.8"}, "cuda_version '11.8' is not supported by torch"),
    "cuda-no-dot": ({"cuda_version": "130"}, "choose one of: 13.0, 13.2, 12.6, cpu"),
    # The builds a torch release publishes (variants.py): 2.15 dropped 12.6, 2.13 had no 13.2.
    "torch-unknown": ({"torch_version": "2.16.0"}, "torch_version '2.16.0' is not supported by this"),
    "cuda-dropped-by-torch": (
        {"torch_version": "2.15.0", "cuda_version": "12.6"},
        "torch 2.15.0 publishes no CUDA 12.6 build (only 13.2, 13.0, cpu); choose one of those, or "
        "torch_version 2.14.1 or 2.13.0",
    ),
    "python-dropped-by-torch": (
        {"torch_version": "2.15.0", "python_version": "3.10"},
        "torch 2.15.0 has no wheels for Python 3.10 (3.11 to 3.15); choose one of those, or torch_version "
        "2.14.1 or 2.13.0",
    ),
    "cuda-newer-than-torch": (
        {"torch_version": "2.13.0", "cuda_version": "13.2"},
        "torch 2.13.0 publishes no CUDA 13.2 build",
    ),
    "license-unknown": ({"open_source_license": "WTFPL"}, "open_source_license 'WTFPL'"),
    "email-no-at": ({"author_email": "me.example.com"}, "is not an e-mail address"),
    "email-no-domain-dot": ({"author_email": "me@localhost"}, "is not an e-mail address"),
    "email-space": ({"author_email": "me @example.com"}, "is not an e-mail address"),
    "description-quote": ({"description": 'A "great" model'}, "without double quotes or backslashes"),
    "author-backslash": ({"author_name": "Ada\\Lovelace"}, "without double quotes or backslashes"),
    # Control characters and line breaks: TOML and YAML refuse them, or YAML splits the line.
    "name-form-feed": ({"project_name": "A\x0cB"}, "project_name 'A\\x0cB' contains '\\x0c': use one line"),
    "name-vertical-tab": ({"project_name": "A\x0bB"}, "contains '\\x0b'"),
    "name-next-line": ({"project_name": "A\x85B"}, "contains '\\x85'"),
    "description-escape": ({"description": "red \x1b[31m"}, "description 'red \\x1b[31m' contains '\\x1b'"),
    "description-start-of-heading": ({"description": "a\x01b"}, "contains '\\x01'"),
    "description-paragraph-separator": ({"description": "a\u2029b"}, "contains '\\u2029'"),
    "description-tab-and-quote": ({"description": 'a\t"b"'}, "contains '\\t', '\"'"),
    "author-delete": ({"author_name": "Ada\x7f"}, "author_name 'Ada\\x7f' contains '\\x7f'"),
    "author-line-separator": ({"author_name": "Ada\u2028Lovelace"}, "contains '\\u2028'"),
    "author-noncharacter": ({"author_name": "Ada\ufffe"}, "contains '\\ufffe'"),
    "email-control": ({"author_email": "me\x1b@example.com"}, "author_email 'me\\x1b@example.com' contains"),
    "email-quote": ({"author_email": 'a"b@c.de'}, "author_email 'a\"b@c.de' contains '\"'"),
    "email-backslash": ({"author_email": "x\\q@c.de"}, "contains '\\\\': " + PRINTABLE_HINT),
    # What setuptools refuses (or rewrites) when it writes the Author-email metadata.
    "email-comma": ({"author_email": "a,b@c.de"}, "author_email 'a,b@c.de' is not an e-mail address"),
    "email-non-ascii-local-part": ({"author_email": "ü@c.de"}, "contains non-ASCII characters"),
    "email-comment": ({"author_email": "a(x)@c.de"}, "is not an e-mail address (it reads as 'a@c.de')"),
    # cookiecutter renders command-line answers as Jinja: '{{ 7*7 }}' would bake as '49'.
    "description-jinja": ({"description": "{{ 7*7 }}"}, "description '{{ 7*7 }}' contains the template"),
    "author-jinja-raw": ({"author_name": "{% raw %}x{% endraw %}"}, "contains the template markup '{%'"),
    # The project folder is named by the slug: it is checked before cookiecutter creates it.
    "slug-empty": ({"project_slug": ""}, "project_slug is empty"),
    "slug-too-long": ({"project_slug": "a" * (MAX_NAME + 1)}, f"set a project_slug of at most {MAX_NAME}"),
    "slug-over-file-name-limit": ({"project_slug": "a" * 300}, "has 300 characters"),
    "slug-path": ({"project_slug": "a/b"}, "project_slug 'a/b' must be lowercase"),
    "slug-parent": ({"project_slug": "../up"}, "project_slug '../up' must be lowercase"),
    "package-too-long": ({"package_name": "a" * (MAX_NAME + 1)}, f"more than {MAX_NAME}"),
    # Top-level modules of locked dependencies, not only the ones the project imports itself.
    "package-shadows-joblib": ({"package_name": "joblib"}, "module 'joblib' of the locked dependency joblib"),
    "package-shadows-jinja2": ({"package_name": "jinja2"}, "of the locked dependency jinja2"),
    "package-shadows-multipart": ({"package_name": "multipart"}, "of the locked dependency python-multipart"),
    "package-shadows-pytest-py": ({"package_name": "py"}, "of the locked dependency pytest"),
    "package-shadows-nvidia": ({"package_name": "nvidia"}, "of the locked dependency nvidia-*"),
    "package-shadows-cuda": ({"package_name": "cuda"}, "of the locked dependency cuda-*"),
    "package-shadows-triton": ({"package_name": "triton"}, "of the locked dependency triton"),
}


@pytest.mark.parametrize(("answers", "message"), REJECTIONS.values(), ids=REJECTIONS.keys())
def test_bad_answer_is_rejected_and_nothing_is_written(tmp_path, answers, message):
    result = bake(tmp_path, **answers)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert any(message in line for line in errors), result.stderr
    # cookiecutter logs its own FailedHookException; our hook must not add a traceback of its own.
    assert "answers.py" not in result.stderr and "pre_gen_project" not in result.stderr.replace(
        "pre_gen_project hook script didn't exit successfully", ""
    )
    assert list(tmp_path.iterdir()) == [], "a rejected bake must leave no output"
    assert not (tmp_path.parent / "up").exists()


def test_every_problem_is_reported_at_once():
    context = {
        **COOKIECUTTER_JSON,
        "project_slug": "ok",
        "package_name": "Bad-Name",
        "cuda_version": "11.8",
        "author_email": "nope",
    }
    found = problems(context)
    assert len(found) == 3
    assert all("\n" not in line for line in found)


def test_defaults_pass():
    context = {**COOKIECUTTER_JSON, "project_slug": "digit-classifier", "package_name": "digit_classifier"}
    assert problems(context) == []


def test_a_bad_slug_stops_before_cookiecutter_creates_the_project_folder(tmp_path):
    """The checks run while cookiecutter collects the answers: one line per problem, no traceback."""
    result = bake(tmp_path, project_slug="a" * 300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    slug = f"project_slug {'a' * 24!r}... has 300 characters; set a project_slug of at most {MAX_NAME}"
    assert result.stderr.splitlines()[0] == f"error: {slug}"
    assert result.stdout.strip() == "Stopping generation: fix the answers above"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("x" * 300, "x" * MAX_NAME),
        ("Deep Learning " * 20, "deep-learning-" * 4 + "deep"),  # cut between words
    ],
    ids=["one-long-word", "words"],
)
def test_a_long_project_name_bakes_with_a_capped_slug(tmp_path, name, slug):
    project = bake_ok(tmp_path, project_name=name, cuda_version="cpu", gpu_check="skip")
    assert project.name == slug and len(slug) <= MAX_NAME
    assert (project / "src" / slug.replace("-", "_") / "__init__.py").is_file()
    assert tomllib.loads((project / "pyproject.toml").read_text())["project"]["name"] == slug


HOSTILE_BUT_FINE = {
    "project_name": "It's #1: {x} & $HOME `id` 100%",
    "description": "  50% of %(prog)s, {0} and 'quotes' ",
    "author_name": "O'Neil, Jr. <Ada>",
    "author_email": "o'neil+ml@example.co.uk",
}


def test_odd_but_printable_answers_bake_into_files_that_parse(tmp_path):
    """Quotes, %, braces and trailing spaces are kept as typed, and every structured file parses."""
    project = bake_ok(tmp_path, cuda_version="cpu", gpu_check="skip", **HOSTILE_BUT_FINE)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    assert pyproject["description"] == HOSTILE_BUT_FINE["description"]
    author = {"name": HOSTILE_BUT_FINE["author_name"], "email": HOSTILE_BUT_FINE["author_email"]}
    assert pyproject["authors"] == [author]
    for path in ("env.yml", "docker-compose.yml", "compose.gpu.yaml"):
        assert yaml.safe_load((project / path).read_text()), path
    devcontainer = read_jsonc(project / ".devcontainer" / "devcontainer.json")
    assert devcontainer["name"] == HOSTILE_BUT_FINE["project_name"]
    for path in project.rglob("*.py"):
        ast.parse(path.read_text(), str(path))
    package = next((project / "src").iterdir()).name
    # The project's CLI, as `make` runs it; --help imports only the standard library.
    result = subprocess.run(
        [sys.executable, "-m", package, "--help"],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project / "src")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert HOSTILE_BUT_FINE["description"].strip() in result.stdout


@pytest.mark.parametrize(
    ("name", "slug", "package"),
    [
        ("Café Lab", "cafe-lab", "cafe_lab"),
        ("Über  Vision 2", "uber-vision-2", "uber_vision_2"),
        ("Naïve Bayes—Test", "naive-bayes-test", "naive_bayes_test"),
    ],
    ids=["accent", "umlaut-spaces-digit", "diaeresis-dash"],
)
def test_non_ascii_names_are_slugified(tmp_path, name, slug, package):
    project = bake_ok(tmp_path, project_name=name)
    assert project.name == slug
    assert (project / "src" / package / "__init__.py").is_file()
    assert name in (project / "README.md").read_text()


def test_defaults_are_allowed_choices_and_prompts_name_them():
    prompts = COOKIECUTTER_JSON["__prompts__"]
    for key, values in CHOICES.items():
        assert COOKIECUTTER_JSON[key] == values[0], f"{key}: the default comes first"
        for value in values:
            assert value in prompts[key], f"prompt for {key} does not mention {value}"
    assert set(prompts) == {k for k in COOKIECUTTER_JSON if not k.startswith("_")}


def _top_level_imports(root) -> set[str]:
    names = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_reserved_names_cover_every_third_party_import_of_the_project(tmp_path):
    project = bake_ok(tmp_path, package_name="pkg_under_test")
    local = {
        "pkg_under_test",
        *(path.stem for path in (project / "tools").glob("*.py")),
    }  # envtool imports locktool
    third_party = _top_level_imports(project) - set(sys.stdlib_module_names) - local
    missing = {name for name in third_party if name.lower() not in module_owners()}
    assert not missing, f"add the distributions of {missing} to LOCKED_MODULES in hooks/answers.py"


def _pins(lock) -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", lock.read_text(), re.M))


# Run by a project environment's Python: the top-level modules of each installed distribution,
# from its RECORD (top_level.txt is optional and often missing).
INSTALLED_MODULES = """
import importlib.metadata as md, json
found = {}
for dist in md.distributions():
    names = set()
    for path in dist.files or ():
        head = path.parts[0]
        if head in ("..", "__pycache__") or head.endswith((".dist-info", ".data", ".pth")):
            continue
        if len(path.parts) == 1 and path.suffix not in (".py", ".so", ".pyd"):
            continue
        name = head.split(".")[0] if len(path.parts) == 1 else head
        if name.isidentifier():
            names.add(name)
    found[dist.metadata["Name"]] = sorted(names)
print(json.dumps(found))
"""


@pytest.mark.slow
def test_locked_modules_are_what_a_real_environment_installs(cpu_project, project_python):
    """Every distribution in a real project's locks, and the modules its RECORD installs."""
    command = [str(project_python), "-c", INSTALLED_MODULES]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    installed = {dist_key(name): modules for name, modules in json.loads(result.stdout).items()}
    locks = cpu_project / "requirements"
    pinned = set().union(*(_pins(lock) for lock in locks.glob("*.txt")))  # prod, dev and mlflow
    assert len(pinned) > 20
    wrong = {
        dist_key(dist): tuple(installed[dist_key(dist)])
        for dist in pinned
        if sorted(locked_modules(dist) or ()) != installed[dist_key(dist)]
    }
    assert not wrong, f"LOCKED_MODULES in hooks/answers.py needs these entries: {wrong}"


@pytest.mark.slow
def test_locked_modules_cover_the_gpu_build_on_the_oldest_and_newest_python(tmp_path):
    """The locks of the newest release's CUDA build (PyPI's Linux torch 2.15 is the CUDA 13.2 build)
    pin more than the CPU build's: NVIDIA's wheels, triton, and backports on the oldest Python. The
    two ends of the range bound what a version between them pins (all five took 85 s of the suite)."""
    variants, newest = wheel_table(), COOKIECUTTER_JSON["torch_version"]  # locked only, never installed
    pythons = sorted(CHOICES["python_version"], key=lambda v: tuple(map(int, v.split("."))))
    release = variants.release_of(newest)
    ends = [p for p in pythons if variants.supports_python(release, p)]
    # The newest release's CUDA 13.2 build at its oldest and newest Python, and the oldest Python
    # (its backports) with the offline release's CUDA 13.0 build.
    combos = [(newest, "13.2", ends[0]), (newest, "13.2", ends[-1]), (INSTALLABLE_TORCH, "13.0", pythons[0])]
    missing: dict[str, set[str]] = {}
    for torch, cuda, python in combos:
        (out := tmp_path / f"{torch}-{cuda}-{python}").mkdir()
        project = bake_ok(out, torch_version=torch, cuda_version=cuda, gpu_check="skip")
        requirements = project / "requirements"
        # every group together, as `make lock` resolves them (joint.txt), as of the project's date
        date = [line for line in (requirements / "lock-date").read_text().splitlines() if line[:1].isdigit()]
        command = [shutil.which("uv"), "pip", "compile", "--quiet", "--python-version", python]
        command += ["--python-platform", "x86_64-manylinux_2_28", "--exclude-newer", date[0]]
        command += ["--exclude-newer-package", "torch=false"]  # as locktool.py exempts it
        command += ["prod.in", "dev.in", "mlflow.in", "-o", "joint.txt"]
        result = subprocess.run(command, cwd=requirements, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        unknown = {dist for dist in _pins(requirements / "joint.txt") if locked_modules(dist) is None}
        if unknown:
            missing[python] = missing.get(python, set()) | unknown
    assert not missing, f"add to LOCKED_MODULES in hooks/answers.py: {missing}"
    assert locked_modules("nvidia-cudnn-cu12") == ("nvidia",)  # the CUDA 12.6 build's wheels


def test_torch_and_cuda_choices_match_the_projects_wheel_table():
    """The template's allowed values and the generated project's table of releases are one list:
    the releases' pins, newest first and the default, and every build any of them publishes."""
    variants = wheel_table()
    assert CHOICES["torch_version"] == [variants.PINS[key] for key in variants.RELEASES]
    newest = CHOICES["torch_version"][0]
    assert COOKIECUTTER_JSON["torch_version"] == newest
    assert sorted(CHOICES["cuda_version"]) == sorted(variants.ALL_BUILDS)
    assert COOKIECUTTER_JSON["cuda_version"] in variants.RELEASES[variants.release_of(newest)]


def test_a_template_given_as_a_relative_path_works(tmp_path):
    """`cookiecutter .` from inside the template: the hooks must still find their modules."""

    def bake_here(out, *answers):
        command = [
            sys.executable,
            "-m",
            "cookiecutter",
            "--no-input",
            "--output-dir",
            str(out),
            ".",
            *answers,
        ]
        return subprocess.run(command, cwd=TEMPLATE, capture_output=True, text=True, timeout=60)

    result = bake_here(tmp_path / "ok", "gpu_check=skip")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "ok" / "digit-classifier" / ".cruft.json").read_text())
    assert record["template"] == str(TEMPLATE)
    rejected = bake_here(tmp_path / "rejected", "cuda_version=11.8")
    assert rejected.returncode != 0 and "error: cuda_version '11.8' is not supported" in rejected.stderr
