"""Checks on the template's answers, shared by the pre-generation hook and the tests.

Every problem is reported as one line that says what is wrong and how to fix it, so a user
who mistyped two answers learns about both at once.
"""

from __future__ import annotations

import keyword
import re
import sys
from collections.abc import Mapping

# Top-level modules the generated project imports (runtime, tests and tooling). A package of
# the same name would shadow them; tests/test_answers.py keeps this list in step with the code.
PROJECT_IMPORTS = frozenset(
    {
        "torch",
        "numpy",
        "sklearn",
        "yaml",
        "tqdm",
        "matplotlib",
        "PIL",
        "pynvml",
        "pytest",
        "piptools",
        "setuptools",
        "pip",
        "ruff",
        "fastapi",
        "starlette",
        "pydantic",
        "uvicorn",
        "prometheus_client",
    }
)
# CPython's own test package, and names pytest and the src layout give a meaning of their own.
SPECIAL_NAMES = frozenset({"test", "tests", "conftest", "src"})

SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
PACKAGE = re.compile(r"^[a-z_][a-z0-9_]*$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")


def name_problem(name: str) -> str | None:
    if any(ch.isalnum() for ch in name):
        return None
    return f"project_name {name!r} has no letters or digits to name the project by"


def slug_problem(slug: str) -> str | None:
    if not slug:
        return "project_slug is empty: give a project_name with letters or digits, or set project_slug"
    if not SLUG.match(slug):
        return (
            f"project_slug {slug!r} must be lowercase letters and digits separated by single "
            "hyphens (e.g. 'digit-classifier')"
        )
    return None


def package_problem(name: str) -> str | None:
    hint = "; set package_name to a lowercase identifier such as 'digit_classifier'"
    if not name:
        return "package_name is empty" + hint
    if name[0].isdigit():
        return f"package_name {name!r} starts with a digit" + hint
    if "-" in name:
        return f"package_name {name!r} contains a hyphen, which Python cannot import" + hint
    if name != name.lower():
        return f"package_name {name!r} has uppercase letters (PEP 8 wants lowercase)" + hint
    if not PACKAGE.match(name):
        return f"package_name {name!r} is not a valid Python identifier" + hint
    if keyword.iskeyword(name):
        return f"package_name {name!r} is a Python keyword" + hint
    taken = sys.stdlib_module_names | SPECIAL_NAMES | {m.lower() for m in PROJECT_IMPORTS}
    if name in taken:
        return f"package_name {name!r} would shadow the module {name!r} that the project imports" + hint
    return None


def choice_problem(key: str, value: str, allowed: list[str], what: str) -> str | None:
    if value in allowed:
        return None
    return f"{key} {value!r} is not supported {what}; choose one of: {', '.join(allowed)}"


def text_problem(key: str, value: str) -> str | None:
    """Free text lands inside Python, TOML and YAML strings: one line, no quotes or backslashes."""
    if any(ch in value for ch in '"\\\n\r'):
        return f"{key} {value!r} must be one line without double quotes or backslashes"
    return None


def email_problem(email: str) -> str | None:
    if EMAIL.match(email):
        return None
    return f"author_email {email!r} is not an e-mail address; use the form name@example.com"


def problems(context: Mapping[str, object]) -> list[str]:
    """All problems with a cookiecutter context (the rendered answers plus private keys)."""
    torch = f"by torch {context['_torch_version']}"
    found = [
        name_problem(str(context["project_name"])),
        slug_problem(str(context["project_slug"])),
        package_problem(str(context["package_name"])),
        email_problem(str(context["author_email"])),
        *(text_problem(key, str(context[key])) for key in ("project_name", "description", "author_name")),
    ]
    for key, allowed in context["_choices"].items():
        what = torch if key in ("python_version", "cuda_version") else "by this template"
        found.append(choice_problem(key, str(context[key]), allowed, what))
    return [p for p in found if p]
