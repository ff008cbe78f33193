"""Command line: `python -m {{ cookiecutter.package_name }} <command>`; every make target calls this.

Heavy libraries are imported inside the commands, so `--help` and usage errors answer at once.
Exit codes: 0 success, 1 failure (one line on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .config import MODEL_PATH, SERVE_CONFIG, TRAIN_CONFIG, ServeConfig, check_device_spec, load_config
from .errors import UsageError, UserError, one_line
from .gpu.__main__ import add_arguments as add_gpu_arguments
from .gpu.__main__ import process_count
from .gpu.__main__ import run as cmd_gpu_check

PROG = "{{ cookiecutter.package_name }}"


def cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)  # before importing torch: mistakes answer at once
    if args.nproc or args.nnodes > 1:
        from .launch import launch

        args.nproc = args.nproc or 1
        return launch(config, args)
    from .train import run_training

    result = run_training(config, args.overrides, args.resume, progress=not args.no_progress)
    if result is None:  # another rank reports, or the run was already complete
        return 0
    metrics, promotion = result.metrics, result.promotion
    model = result.model_path if promotion.promoted else result.run_dir / "checkpoint.pt"
    print(
        f"test accuracy {metrics['test_accuracy']:.4f} ({config.task}) on {metrics['device']}"
        f"{f' x {n} processes' if (n := metrics['processes']) > 1 else ''} "
        f"in {metrics['seconds']:.1f}s\nrun   {result.run_dir}\nmodel {model}"
    )
    if not promotion.promoted:
        print(
            f"note: not promoted to {result.model_path}: run {promotion.other}, started after this one, "
            "finished first and holds it",
            file=sys.stderr,
        )
    elif promotion.other:
        print(
            f"note: replaced the model of run {promotion.other}, which finished while this one trained",
            file=sys.stderr,
        )
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from .config import describe

    if args.serve:
        print("\n".join(describe(load_config(args.config or SERVE_CONFIG, args.overrides, kind=ServeConfig))))
        return 0
    from .tasks import get_task, model_options

    config = load_config(args.config or TRAIN_CONFIG, args.overrides)
    print("\n".join(describe(config, model_options(get_task(config.task), config.model))))
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from .tasks import available, describe_task

    print("\n\n".join(describe_task(name) for name in available()))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from .training.runs import compare, list_runs

    print(compare(args.runs_dir, *args.compare) if args.compare else list_runs(args.runs_dir))
    return 0


def cmd_tensorboard(args: argparse.Namespace) -> int:
    runs_dir = load_config(args.config, []).output.runs_dir  # where this project's runs are written
    try:
        from tensorboard import program
    except ImportError:
        raise UserError(
            "tensorboard is not installed; requirements/dev.txt pins it: `make sync` (the runtime image "
            "has only the runtime lock)"
        ) from None
    board = program.TensorBoard()
    board.configure(logdir=runs_dir, host=args.host, port=args.port, reload_interval=5)
    board.main()  # serves until interrupted; says where
    return 0


def cmd_env_report(args: argparse.Namespace) -> int:
    from .reproducibility import environment

    print(json.dumps(environment(Path.cwd()), indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    metrics = evaluate(args.model, args.device, args.task)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(
            f"test accuracy {metrics['test_accuracy']:.4f}  loss {metrics['test_loss']:.4f}  "
            f"({metrics['test_samples']} samples, {metrics['task']}, {metrics['model']}, {metrics['device']})"
        )
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    import numpy as np

    from .predict import Predictor, read_inputs

    predictor = Predictor(args.model, args.device, args.task)
    failed = 0
    for path in args.paths:
        try:
            named = read_inputs(path, predictor.task)
        except UserError as err:
            print(f"{PROG}: error: {one_line(str(err))}", file=sys.stderr)
            failed += 1
            continue
        predictions = predictor.predict(np.stack([sample for _, sample in named]))
        for (name, _), pred in zip(named, predictions, strict=True):
            if args.json:
                fields = ("label", "class", "confidence", "probabilities")
                values = (pred.label, pred.name, pred.confidence, pred.probabilities)
                print(json.dumps({"input": name, **dict(zip(fields, values, strict=True))}))
            else:
                print(f"{one_line(name)}: {pred.name} (confidence {pred.confidence:.3f})")
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    flags = [
        f"{key}={value}" for key in ("host", "port", "workers") if (value := getattr(args, key)) is not None
    ]
    config = load_config(args.config, [*args.overrides, *flags], kind=ServeConfig)
    if not Path(config.model_path).is_file():
        raise UserError(f"no model at {config.model_path!r} to serve; train one first with `make train`")
    from .checkpoint import load_model
    from .serving.server import serve

    load_model(config.model_path, config.task or None)  # a bad model or the wrong task: one line, here
    serve(config)
    return 0


def device_arg(spec: str) -> str:
    try:
        return check_device_spec(spec)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=MODEL_PATH, help=f"checkpoint (default: {MODEL_PATH})")
    parser.add_argument("--task", help="refuse a model of any other task (default: the model's own)")
    parser.add_argument("--device", default="auto", type=device_arg, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--json", action="store_true", help="JSON output")


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    launch = parser.add_argument_group(
        "processes (torchrun)", "--nproc N starts N processes with torchrun: DDP, NCCL on GPUs, gloo on CPUs"
    )
    launch.add_argument("--nproc", type=process_count, help="processes on this node (one per GPU)")
    launch.add_argument("--nnodes", type=process_count, default=1, help="machines taking part (default 1)")
    launch.add_argument("--node-rank", type=int, help="0 on the machine that hosts the rendezvous")
    launch.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="the rendezvous, on the first node")
    launch.add_argument("--rdzv-id", metavar="NAME", help="the job's name, the same on every node")
    launch.add_argument(
        "--max-restarts", type=int, default=0, help="restart the processes this often after a failure"
    )


def add_training_commands(commands) -> None:
    train = commands.add_parser(
        "train",
        help="train the configured task",
        description="Train, write runs/<run-id>/ and promote the model to models/model.pt.",
        epilog="Overrides: key=value, e.g. task=breast_cancer optim.epochs=5 data.batch_size=128 device=cpu",
    )
    train.add_argument("--config", default=TRAIN_CONFIG, help=f"YAML config (default: {TRAIN_CONFIG})")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    train.add_argument(
        "--resume",
        metavar="auto|PATH",
        help="continue a stopped run: the newest good checkpoint, or this one",
    )
    add_launch_arguments(train)
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    train.set_defaults(handler=cmd_train)

    config = commands.add_parser(
        "config",
        help="print the resolved config, every key with its value and meaning",
        description="Defaults, then the YAML file, then the overrides, as YAML with comments.",
    )
    config.add_argument("--serve", action="store_true", help=f"the server's config ({SERVE_CONFIG})")
    config.add_argument("--config", help=f"YAML config (default: {TRAIN_CONFIG}, or {SERVE_CONFIG})")
    config.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    config.set_defaults(handler=cmd_config)

    tasks = commands.add_parser("tasks", help="list the tasks: inputs, classes, file types, model options")
    tasks.set_defaults(handler=cmd_tasks)

    runs = commands.add_parser(
        "runs",
        help="list runs with their key metrics, or compare two",
        description="List runs/ (id, status, task, seed, epochs, test accuracy, commit), or show what "
        "differs between two runs' manifests.",
    )
    runs.add_argument("--runs-dir", default="runs", type=Path, help="where the runs are (default: runs)")
    runs.add_argument("--compare", nargs=2, metavar="RUN", help="two run ids (or unique prefixes)")
    runs.set_defaults(handler=cmd_runs)

    board = commands.add_parser(
        "tensorboard",
        help="serve the runs' TensorBoard logs (loss, accuracy, learning rate, config as hparams)",
        description="TensorBoard over output.runs_dir of the training config, on loopback by default.",
    )
    board.add_argument("--config", default=TRAIN_CONFIG, help=f"YAML config (default: {TRAIN_CONFIG})")
    board.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    board.add_argument("--port", type=int, default=6006, help="port (default: 6006)")
    board.set_defaults(handler=cmd_tensorboard)

    env_report = commands.add_parser(
        "env-report", help="print this machine's fingerprint (versions, GPUs, git, lock hashes)"
    )
    env_report.set_defaults(handler=cmd_env_report)


def add_model_commands(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="recompute test metrics of a saved model",
        description="Score a saved model on the test split it was trained with.",
    )
    add_model_arguments(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)

    infer = commands.add_parser(
        "infer",
        help="predict the inputs in files",
        description="Predict with a saved model: .npy arrays (one sample or a batch, in the training "
        "scale) for every task, and the task's own files (digits: PNG/JPEG; breast_cancer: CSV rows). "
        "`tasks` lists each task's inputs.",
    )
    infer.add_argument("paths", nargs="+", metavar="PATH", help="input files; - reads standard input")
    add_model_arguments(infer)
    infer.set_defaults(handler=cmd_infer)

    serve = commands.add_parser(
        "serve",
        help="serve predictions over HTTP",
        description="The inference server: POST /predict and /predict/file; GET /health, /ready, /metrics.",
        epilog="Overrides: key=value, e.g. max_batch_size=32 max_wait_ms=2 device=cpu",
    )
    serve.add_argument("--config", default=SERVE_CONFIG, help=f"YAML config (default: {SERVE_CONFIG})")
    serve.add_argument("--host", help="address to bind (default from the config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default from the config: 8000)")
    serve.add_argument("--workers", help="worker processes: auto (one per CPU core, 2 per GPU) or a number")
    serve.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    serve.set_defaults(handler=cmd_serve)

    gpu = commands.add_parser(
        "gpu-check",
        help="check the driver, CUDA and GPUs against the project's torch build",
        description="Diagnose GPU problems before they cost a training run: driver, CUDA "
        "compatibility, GPU architecture, MIG, compute mode, CUDA_VISIBLE_DEVICES, the installed torch, "
        "/dev/shm and (with --docker) the NVIDIA Container Toolkit. Exit 0 pass/warn, 1 fail.",
    )
    add_gpu_arguments(gpu)
    gpu.set_defaults(handler=cmd_gpu_check)


def build_parser() -> argparse.ArgumentParser:
    # argparse %-formats the description (for %(prog)s): the project's own '%' signs are doubled.
    parser = argparse.ArgumentParser(prog=PROG, description="{{ cookiecutter.description | replace('%', '%%') }}")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_training_commands(commands)
    add_model_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may come after options too (`train --resume auto seed=3`), which argparse cannot
    # split into two runs of one positional argument by itself.
    if extra and (not hasattr(args, "overrides") or any(arg.startswith("-") for arg in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    try:
        return args.handler(args)
    except UserError as err:
        if not err.shared or os.environ.get("RANK", "0") == "0":
            print(f"{PROG}: error: {one_line(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
