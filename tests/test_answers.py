"""The pre-generation hook: every rejection, through the real cookiecutter CLI, and slugification."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys

import pytest
from answers import PROJECT_IMPORTS, problems

from .conftest import CHOICES, COOKIECUTTER_JSON, TEMPLATE, bake, bake_ok

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
    "cuda-no-dot": ({"cuda_version": "130"}, "choose one of: 13.0, 12.6, cpu"),
    "license-unknown": ({"open_source_license": "WTFPL"}, "open_source_license 'WTFPL'"),
    "email-no-at": ({"author_email": "me.example.com"}, "is not an e-mail address"),
    "email-no-domain-dot": ({"author_email": "me@localhost"}, "is not an e-mail address"),
    "email-space": ({"author_email": "me @example.com"}, "is not an e-mail address"),
    "description-quote": ({"description": 'A "great" model'}, "without double quotes or backslashes"),
    "author-backslash": ({"author_name": "Ada\\Lovelace"}, "without double quotes or backslashes"),
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


def test_explicitly_empty_slug_writes_nothing(tmp_path):
    """cookiecutter itself refuses an empty directory name before any hook runs: still no output."""
    out = tmp_path / "out"
    out.mkdir()
    result = bake(out, project_slug="")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert list(out.iterdir()) == []


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
    third_party = _top_level_imports(project) - set(sys.stdlib_module_names) - {"pkg_under_test"}
    assert third_party <= PROJECT_IMPORTS, f"add to PROJECT_IMPORTS: {third_party - PROJECT_IMPORTS}"


def test_cuda_choices_match_the_projects_wheel_table():
    """The template's allowed values and the generated project's build table are one list."""
    path = next(TEMPLATE.glob("*/src/*/variants.py"))
    spec = importlib.util.spec_from_file_location("variants", path)
    variants = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = variants  # dataclasses look their module up while the class is built
    spec.loader.exec_module(variants)
    assert list(variants.BUILDS) == CHOICES["cuda_version"]


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
