"""Command line: `python -m {{ cookiecutter.package_name }} <command>`; every make target calls this.

Heavy libraries are imported inside the commands, so `--help` and usage errors answer at once.
Exit codes: 0 success, 1 failure (one line on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .config import check_device_spec
from .errors import UsageError, UserError
from .variants import BUILDS

PROG = "{{ cookiecutter.package_name }}"
DEFAULT_CONFIG = "configs/train.yaml"
DEFAULT_MODEL = "models/model.pt"


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config

    config = load_config(args.config, args.overrides)  # before importing torch: mistakes answer at once
    from .train import train

    result = train(config, progress=not args.no_progress)
    metrics = result.metrics
    print(
        f"test accuracy {metrics['test_accuracy']:.4f} on {metrics['device']} "
        f"in {metrics['seconds']:.1f}s\nrun   {result.run_dir}\nmodel {result.model_path}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    metrics = evaluate(args.model, args.device)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(
            f"test accuracy {metrics['test_accuracy']:.4f}  loss {metrics['test_loss']:.4f}  "
            f"({metrics['test_samples']} samples, {metrics['model']}, {metrics['device']})"
        )
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    import numpy as np

    from .predict import Predictor, load_inputs

    predictor = Predictor(args.model, args.device)
    failed = 0
    for path in args.paths:
        try:
            named = load_inputs(path)
        except UserError as err:
            print(f"{PROG}: error: {err}", file=sys.stderr)
            failed += 1
            continue
        predictions = predictor.predict(np.stack([sample for _, sample in named]))
        for (name, _), pred in zip(named, predictions, strict=True):
            if args.json:
                print(
                    json.dumps(
                        {
                            "input": name,
                            "label": pred.label,
                            "confidence": pred.confidence,
                            "probabilities": pred.probabilities,
                        }
                    )
                )
            else:
                print(f"{name}: {pred.label} (confidence {pred.confidence:.3f})")
    return 1 if failed else 0


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from .gpu.checks import FAIL, WARN, run_checks
    from .gpu.report import render_text, to_json
    from .variants import project_cuda

    cuda = args.cuda or project_cuda()
    if cuda is None:
        raise UsageError("no env.yml here to read the project's CUDA build from; pass --cuda")
    report = run_checks(cuda, docker=args.docker)
    print(json.dumps(to_json(report)) if args.json else render_text(report))
    return 1 if report.status == FAIL or (args.strict and report.status == WARN) else 0


def device_arg(spec: str) -> str:
    try:
        return check_device_spec(spec)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="{{ cookiecutter.description }}")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train the example model",
        description="Train, write runs/<run-id>/ and promote the model to models/model.pt.",
        epilog="Overrides: section.key=value, e.g. optim.epochs=5 data.batch_size=128 device=cpu",
    )
    train.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default: {DEFAULT_CONFIG})")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="recompute test metrics of a saved model",
        description="Score a saved model on the test split it was trained with.",
    )
    evaluate.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint (default: {DEFAULT_MODEL})")
    evaluate.add_argument("--device", default="auto", type=device_arg, help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=cmd_evaluate)

    infer = commands.add_parser(
        "infer",
        help="predict digits in images or .npy arrays",
        description="Predict PNG/JPEG images of one digit (any size, either polarity) and .npy "
        "arrays of 8x8 samples in the training scale 0-16 ((8, 8), (N, 8, 8), (64,) or (N, 64)).",
    )
    infer.add_argument("paths", nargs="+", metavar="PATH", help="image or .npy files")
    infer.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint (default: {DEFAULT_MODEL})")
    infer.add_argument("--device", default="auto", type=device_arg, help="auto, cpu, cuda or cuda:N")
    infer.add_argument("--json", action="store_true", help="one JSON object per sample")
    infer.set_defaults(handler=cmd_infer)

    gpu = commands.add_parser(
        "gpu-check",
        help="check the driver, CUDA and GPUs against the project's torch build",
        description="Diagnose GPU problems before they cost a training run: driver, CUDA "
        "compatibility, GPU architecture, MIG, compute mode, CUDA_VISIBLE_DEVICES, the installed torch, "
        "/dev/shm and (with --docker) the NVIDIA Container Toolkit. Exit 0 pass/warn, 1 fail.",
    )
    gpu.add_argument("--json", action="store_true", help="print one JSON object")
    gpu.add_argument("--strict", action="store_true", help="treat warnings as failures (exit 1)")
    gpu.add_argument("--cuda", choices=list(BUILDS), help="check another build than env.yml's")
    gpu.add_argument("--docker", action="store_true", help="also check the NVIDIA Container Toolkit")
    gpu.set_defaults(handler=cmd_gpu_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UserError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
