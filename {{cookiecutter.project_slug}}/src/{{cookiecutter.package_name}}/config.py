"""Typed configuration (training, serving): a YAML file plus `section.key=value` overrides."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError, UserError


def _require(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_spec(spec: str) -> str:
    if not DEVICE_SPEC.match(spec):
        raise UsageError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N")
    return spec


@dataclass
class DataConfig:
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    batch_size: int = 64
    num_workers: int = 0


@dataclass
class ModelConfig:
    channels: int = 32
    hidden: int = 128
    dropout: float = 0.25


@dataclass
class OptimConfig:
    epochs: int = 25
    lr: float = 0.003
    weight_decay: float = 0.0001


@dataclass
class OutputConfig:
    runs_dir: str = "runs"
    model_path: str = "models/model.pt"
    checkpoint_every: int = 1  # epochs between resumable checkpoints
    keep_checkpoints: int = 3  # the newest few, so a damaged one has a predecessor


@dataclass
class Config:
    seed: int = 42
    deterministic: bool = True  # bit-identical reruns; False lets cuDNN pick faster kernels
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        check_device_spec(self.device)
        checks = [
            (0 < self.data.val_fraction < 1, "data.val_fraction must be between 0 and 1"),
            (0 < self.data.test_fraction < 1, "data.test_fraction must be between 0 and 1"),
            (
                self.data.val_fraction + self.data.test_fraction < 1,
                "data.val_fraction + data.test_fraction must leave samples to train on",
            ),
            (self.data.batch_size > 0, "data.batch_size must be positive"),
            (self.data.num_workers >= 0, "data.num_workers must be 0 or more"),
            (self.model.channels > 0 and self.model.hidden > 0, "model sizes must be positive"),
            (0 <= self.model.dropout < 1, "model.dropout must be in [0, 1)"),
            (self.optim.epochs > 0, "optim.epochs must be positive"),
            (self.optim.lr > 0, "optim.lr must be positive"),
            (self.output.checkpoint_every > 0, "output.checkpoint_every must be positive"),
            (self.output.keep_checkpoints > 0, "output.keep_checkpoints must be positive"),
        ]
        _require(checks)


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    model_path: str = "models/model.pt"
    device: str = "auto"
    max_batch_size: int = 64  # samples in one forward pass
    max_wait_ms: float = 0.0  # extra wait for a fuller batch; 0 = take what queued during the last pass
    max_request_samples: int = 256  # larger requests get 413
    max_body_bytes: int = 1_048_576
    graceful_timeout_s: float = 10.0  # in-flight requests get this long to finish on shutdown

    def validate(self) -> None:
        check_device_spec(self.device)
        checks = [
            (0 <= self.port <= 65535, "port must be 0-65535"),
            (self.workers >= 1, "workers must be at least 1"),
            (self.max_batch_size >= 1, "max_batch_size must be at least 1"),
            (self.max_wait_ms >= 0, "max_wait_ms must be 0 or more"),
            (self.max_request_samples >= 1, "max_request_samples must be at least 1"),
            (self.max_body_bytes >= 1024, "max_body_bytes must be at least 1024"),
            (self.graceful_timeout_s >= 0, "graceful_timeout_s must be 0 or more"),
        ]
        _require(checks)


def _coerce(key: str, value: Any, expected: type) -> Any:
    """Check a value against the field's type; ints are accepted where floats are expected."""
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise UsageError(f"config key {key!r} must be {expected.__name__}, got {value!r}")
    return value


def _merge(target: Any, values: dict[str, Any], prefix: str = "") -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in fields:
            known = ", ".join(f"{prefix}{n}" for n in fields)
            raise UsageError(f"unknown config key {key!r} (known: {known})")
        current = getattr(target, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UsageError(f"config key {key!r} is a section; set {key}.<key>=<value>")
            _merge(current, value, prefix=f"{key}.")
        else:
            setattr(target, name, _coerce(key, value, type(current)))


def parse_override(text: str) -> dict[str, Any]:
    """`optim.lr=0.01` -> {"optim": {"lr": 0.01}}; values are parsed as YAML scalars."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"override {text!r} must look like section.key=value (e.g. optim.epochs=5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise UsageError(f"override {text!r}: value is not valid YAML ({err.problem})") from None
    nested: dict[str, Any] = {}
    *parents, leaf = key.strip().split(".")
    node = nested
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return nested


def config_from_dict(values: dict[str, Any]) -> Config:
    """A Config back from `to_dict()` output (a run's recorded config)."""
    config = Config()
    _merge(config, values)
    config.validate()
    return config


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    kind: type[Config] | type[ServeConfig] = Config,
) -> Any:  # an instance of `kind`
    config = kind()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {str(path)!r} not found")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise UserError(f"config file {str(path)!r} is not valid YAML: {err}") from None
        if not isinstance(values, dict):
            raise UserError(f"config file {str(path)!r} must hold a mapping of sections")
        _merge(config, values)
    for text in overrides:
        _merge(config, parse_override(text))
    config.validate()
    return config
