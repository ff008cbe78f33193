"""Typed configuration: every default is written once, here (a model's options in its task module);
a YAML file and `section.key=value` overrides change them."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError, UserError
from .training.tracking import backends

MODEL_PATH = "models/model.pt"  # the promoted model: train writes it; evaluate, infer and serve read it
TRAIN_CONFIG = "configs/train.yaml"
SERVE_CONFIG = "configs/serve.yaml"
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
WORKERS = re.compile(r"^(auto|[1-9]\d{0,3})$")
SEED_MAX = 2**32 - 1  # NumPy's and scikit-learn's seeds are 0 .. 2**32 - 1
INT_LIMIT = 2**63  # config ints end up in torch and NumPy, whose integers are 64-bit


def option(default: Any, help: str) -> Any:
    """A config field with its default and the one-line help that `config` prints beside it."""
    return field(default=default, metadata={"help": help})


def require(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


def check_device_spec(spec: str) -> str:
    if not DEVICE_SPEC.match(spec):
        raise UsageError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N")
    return spec


@dataclass
class DataConfig:
    val_fraction: float = option(0.15, "of all samples; the split is stratified and fixed by seed")
    test_fraction: float = option(0.2, "of all samples")
    batch_size: int = option(64, "samples per training step, split evenly among the processes (NPROC)")
    num_workers: int = option(0, "DataLoader processes; in-memory data sets only pay their start-up")


@dataclass
class OptimConfig:
    epochs: int = option(25, "passes over the training split")
    lr: float = option(0.003, "AdamW learning rate, cosine-annealed over the epochs")
    weight_decay: float = option(0.0001, "AdamW weight decay")


@dataclass
class OutputConfig:
    runs_dir: str = option("runs", "one directory per run: config, manifest, metrics, checkpoints")
    model_path: str = option(MODEL_PATH, "where a finished run's model is promoted")
    checkpoint_every: int = option(1, "epochs between resumable checkpoints (runs/<id>/checkpoints/)")
    keep_checkpoints: int = option(3, "the newest few are kept, so a damaged one has a predecessor")


@dataclass
class Config:
    task: str = option(
        "", "the task module in tasks/ (data, model, inputs, labels); configs/train.yaml names it"
    )
    seed: int = option(42, "seeds every random generator and the data split (make train SEED=7)")
    deterministic: bool = option(True, "bit-identical reruns; false lets cuDNN pick faster kernels")
    device: str = option("auto", "auto (CUDA when usable, else CPU), cpu, cuda or cuda:N")
    precision: str = option("fp32", "fp32, bf16 or fp16 autocast (fp16 scales the loss); weights stay fp32")
    compile: bool = option(False, "torch.compile the model: faster steps after a compile at start")
    tracking: str = option(
        "tensorboard", "where runs are logged: tensorboard, mlflow, tensorboard,mlflow or none (rank 0)"
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=dict)  # the task's options, completed from its defaults
    optim: OptimConfig = field(default_factory=OptimConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_processes(self, processes: int) -> None:
        """Each of the training processes takes an equal share of every batch."""
        size = self.data.batch_size
        require(
            [
                (
                    size % processes == 0,
                    f"data.batch_size={size} does not split evenly among {processes} processes",
                ),
                (
                    self.seed + processes - 1 <= SEED_MAX,  # each process seeds with seed + its rank
                    f"seed={self.seed} + {processes - 1} (the last process's rank) is over {SEED_MAX}",
                ),
            ]
        )

    def check_outputs(self) -> None:
        """Before training, not after it: the run and the model can be written where the config
        says. Probed by creating (and removing) a directory; nothing is left behind."""
        runs_dir, model_path = self.output.runs_dir, self.output.model_path
        model = Path(model_path)
        if model.is_dir():
            raise UserError(
                f"output.model_path={model_path!r} is a directory; name the model's file (e.g. {MODEL_PATH})"
            )
        if model.exists() and not model.is_file():
            raise UserError(f"output.model_path={model_path!r} exists and is not a regular file")
        for key, value, folder in (
            ("output.runs_dir", runs_dir, Path(runs_dir)),
            ("output.model_path", model_path, model.parent),
        ):
            problem = unwritable(folder)
            if problem:
                raise UserError(f"{key}={value!r} cannot be written: {problem}")

    def validate(self) -> None:
        check_device_spec(self.device)
        backends(self.tracking)
        data, optim, output = self.data, self.optim, self.output
        choices = ", ".join(PRECISIONS)
        require(
            [
                (
                    bool(self.task),
                    "no task configured: set `task: <name>` in configs/train.yaml (`tasks` lists them)",
                ),
                (0 <= self.seed <= SEED_MAX, f"seed must be 0 to {SEED_MAX}, got {self.seed}"),
                (self.precision in PRECISIONS, f"precision {self.precision!r} is not one of {choices}"),
                (0 < data.val_fraction < 1, "data.val_fraction must be between 0 and 1"),
                (0 < data.test_fraction < 1, "data.test_fraction must be between 0 and 1"),
                (
                    data.val_fraction + data.test_fraction < 1,
                    "data.val_fraction + data.test_fraction must leave samples to train on",
                ),
                (data.batch_size > 0, "data.batch_size must be positive"),
                (data.num_workers >= 0, "data.num_workers must be 0 or more"),
                (optim.epochs > 0, "optim.epochs must be positive"),
                (optim.lr > 0, "optim.lr must be positive"),
                (optim.weight_decay >= 0, "optim.weight_decay must be 0 or more"),
                (bool(output.runs_dir), "output.runs_dir must name a directory"),
                (bool(output.model_path), "output.model_path must name a file"),
                (output.checkpoint_every > 0, "output.checkpoint_every must be positive"),
                (output.keep_checkpoints > 0, "output.keep_checkpoints must be positive"),
            ]
        )


@dataclass
class ServeConfig:
    host: str = option("127.0.0.1", "address to bind; 0.0.0.0 serves other machines")
    port: int = option(8000, "TCP port")
    workers: str = option("auto", "processes, each with the model: auto = one per CPU core, or 2 per GPU")
    model_path: str = option(MODEL_PATH, "the model to serve; its checkpoint names its task")
    task: str = option("", "refuse a model of any other task; empty: serve whatever the model is")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    max_batch_size: int = option(64, "samples in one forward pass")
    max_wait_ms: float = option(0.0, "extra wait for a fuller batch; 0: batch what queued meanwhile")
    max_request_samples: int = option(256, "larger requests get 413; over max_batch_size: several passes")
    max_body_bytes: int = option(1_048_576, "larger bodies and uploads get 413, before they are read")
    max_queue_samples: int = option(256, "samples waiting for the model; past it, 503 with Retry-After")
    max_queue_ms: float = option(100.0, "a request queued this long is dropped with 503, not run late")
    client_timeout_s: float = option(10.0, "to send a request's headers, and its body; slower: closed")
    max_connections: int = option(0, "open connections per worker (0: the open-files limit less a reserve)")
    graceful_timeout_s: float = option(10.0, "in-flight requests get this long to finish on SIGTERM")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        check_device_spec(self.device)
        require(
            [
                (bool(self.host), "host must name an address, e.g. 127.0.0.1 or 0.0.0.0"),
                (bool(self.model_path), "model_path must name a model file"),
                (0 <= self.port <= 65535, "port must be 0-65535"),
                (WORKERS.fullmatch(self.workers) is not None, "workers must be auto or a number from 1"),
                (self.max_batch_size >= 1, "max_batch_size must be at least 1"),
                (self.max_wait_ms >= 0, "max_wait_ms must be 0 or more"),
                (self.max_request_samples >= 1, "max_request_samples must be at least 1"),
                (self.max_body_bytes >= 1024, "max_body_bytes must be at least 1024"),
                (self.max_queue_samples >= 1, "max_queue_samples must be at least 1"),
                (self.max_queue_ms > 0, "max_queue_ms must be positive"),
                (self.client_timeout_s > 0, "client_timeout_s must be positive"),
                (self.max_connections >= 0, "max_connections must be 0 (automatic) or more"),
                (self.graceful_timeout_s >= 0, "graceful_timeout_s must be 0 or more"),
            ]
        )


def unwritable(folder: Path) -> str | None:
    """Why no file can be written in `folder` (created when missing, as the writers do), or None.
    Probed in the folder, or its nearest existing ancestor, with a directory removed at once."""
    existing = folder
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{str(existing)!r} is not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".write-check-"))
    except OSError as err:
        return f"cannot create anything in {str(existing)!r} ({err.strerror})"
    return None


def _coerce(key: str, value: Any, expected: type) -> Any:
    """Check a value against the field's type; ints are accepted where floats are expected. Floats
    must be finite, ints 64-bit, strings free of NUL (no config value means any of those)."""
    given = value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < INT_LIMIT else math.inf
    if expected is str and type(value) is int:  # `workers: 2` beside `workers: auto`
        value = str(value)
    if expected is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise UsageError(f"config key {key!r} must be {expected.__name__}, got {given!r}")
    if expected is float and not math.isfinite(value):
        raise UsageError(f"config key {key!r} must be a finite number, got {given!r}")
    if expected is int and not -INT_LIMIT < value < INT_LIMIT:
        raise UsageError(f"config key {key!r} is out of range, got {given!r}")
    if expected is str and "\x00" in value:
        raise UsageError(f"config key {key!r} must not contain a NUL character")
    return value


def merge(target: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Set `values` (nested dicts) on the dataclass `target`, checking every key and type."""
    fields = {f.name: f for f in dataclasses.fields(target)}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in fields:
            known = ", ".join(f"{prefix}{n}" for n in fields)
            raise UsageError(f"unknown config key {key!r} (known: {known})")
        current = getattr(target, name)
        if dataclasses.is_dataclass(current) or isinstance(current, dict):
            if not isinstance(value, dict):
                raise UsageError(f"config key {key!r} is a section; set {key}.<key>=<value>")
            if isinstance(current, dict):  # free-form until its owner (the task) checks it
                current.update(value)
            else:
                merge(current, value, prefix=f"{key}.")
        else:
            setattr(target, name, _coerce(key, value, type(current)))


def parse_override(text: str) -> dict[str, Any]:
    """`optim.lr=0.01` -> {"optim": {"lr": 0.01}}; values are parsed as YAML scalars."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"override {text!r} must look like section.key=value (e.g. optim.epochs=5)")
    problem, value = parse_yaml(raw) if raw.strip() else (None, "")
    if problem:
        raise UsageError(f"override {text!r}: value is not valid YAML ({problem})")
    nested: dict[str, Any] = {}
    *parents, leaf = key.strip().split(".")
    node = nested
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return nested


def parse_yaml(text: str) -> tuple[str | None, Any]:
    """(None, the value), or (what is wrong in one line, None)."""
    try:
        return None, yaml.safe_load(text)
    except RecursionError:  # PyYAML composes nested collections recursively
        return "nested too deeply", None
    except yaml.YAMLError as err:
        return yaml_problem(err, text), None


def yaml_problem(err: yaml.YAMLError, text: str) -> str:
    """What is wrong and where: line and column (from 1), and where an unclosed bracket opened."""
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    context = getattr(err, "context_mark", None)
    if context is not None and getattr(err, "context", None):
        problem += f" ({err.context} at {place(context.line, context.column)})"
    mark = getattr(err, "problem_mark", None)
    if mark is not None:
        return f"{place(mark.line, mark.column)}: {problem}"
    position = getattr(err, "position", None)  # a ReaderError: a character YAML does not allow
    if position is not None:
        line, line_start = text.count("\n", 0, position), text.rfind("\n", 0, position) + 1
        return f"{place(line, position - line_start)}: {problem}"
    return problem


def place(line: int, column: int) -> str:
    return f"line {line + 1}, column {column + 1}"


def read_yaml(path: str | Path) -> dict[str, Any]:
    path, name = Path(path), repr(str(path))
    if path.is_dir():
        raise UserError(f"config file {name} is a directory; give a YAML file (e.g. {TRAIN_CONFIG})")
    if not path.is_file():
        raise UserError(f"config file {name} not found")
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except OSError as err:
        raise UserError(f"config file {name} cannot be read ({err.strerror})") from None
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        byte = f"{data[err.start]:#04x}"
        raise UserError(f"config file {name} is not UTF-8 text: byte {byte} on line {line}") from None
    problem, values = parse_yaml(text)
    if problem:
        raise UserError(f"config file {name} is not valid YAML: {problem}")
    values = {} if values is None else values  # an empty file, or only comments
    if not isinstance(values, dict):
        kind = type(values).__name__
        raise UserError(f"config file {name} must hold `section: values` mappings, not a {kind}")
    return values


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    kind: type[Config] | type[ServeConfig] = Config,
) -> Any:  # an instance of `kind`
    """Defaults, then the YAML file, then the overrides; checked, and (training) the task's model
    options completed from the task's own defaults."""
    config = kind()
    if path is not None:
        merge(config, read_yaml(path))
    for text in overrides:
        merge(config, parse_override(text))
    config.validate()
    if isinstance(config, Config):
        from .tasks import get_task, model_options  # imports the task (and torch) only now

        config.model = dataclasses.asdict(model_options(get_task(config.task), config.model))
    return config


def config_from_dict(values: dict[str, Any]) -> Config:
    """A Config back from `to_dict()` output (a run's recorded config)."""
    config = Config()
    merge(config, values)
    config.validate()
    return config


def describe(config: Any, options: Any = None, indent: str = "") -> list[str]:
    """The config as YAML lines, each key with its help as a comment (`python -m pkg config`)."""
    lines = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        nested = options if isinstance(value, dict) and options is not None else value
        if dataclasses.is_dataclass(nested):
            lines += [f"{indent}{f.name}:", *describe(nested, indent=indent + "  ")]
            continue
        text = yaml.safe_dump(value, default_flow_style=True, width=1000).removesuffix("\n...\n").strip()
        comment = f.metadata.get("help", "")
        lines.append(f"{indent}{f.name}: {text}".ljust(36) + (f"  # {comment}" if comment else ""))
    return lines
