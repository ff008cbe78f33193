"""`python -m {{ cookiecutter.package_name }}.gpu`: the preflight with the standard library alone.

The Docker targets run it with the system Python before any environment or image exists; inside
the project's environment `python -m {{ cookiecutter.package_name }} gpu-check` is the same command.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..variants import ALL_BUILDS, project_cuda
from .checks import FAIL, WARN, run_checks
from .report import render_text, to_json


def process_count(text: str) -> int:
    """--nproc: a whole number of at least 1 (argparse turns the error into exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--strict", action="store_true", help="treat warnings as failures (exit 1)")
    parser.add_argument("--cuda", choices=list(ALL_BUILDS), help="check another build than env.yml's")
    parser.add_argument("--docker", action="store_true", help="also check the NVIDIA Container Toolkit")
    parser.add_argument(
        "--nproc", type=process_count, metavar="N", help="also check N training processes, one per GPU"
    )


def run(args: argparse.Namespace) -> int:
    cuda = args.cuda or project_cuda()
    if cuda is None:
        print("error: no env.yml here to read the project's CUDA build from; pass --cuda", file=sys.stderr)
        return 2
    report = run_checks(cuda, docker=args.docker, nproc=args.nproc)
    print(json.dumps(to_json(report)) if args.json else render_text(report))
    return 1 if report.status == FAIL or (args.strict and report.status == WARN) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m {{ cookiecutter.package_name }}.gpu", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
