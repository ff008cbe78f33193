import dataclasses

import pytest
import yaml

from {{ cookiecutter.package_name }}.config import Config, ServeConfig, describe, load_config, parse_override
from {{ cookiecutter.package_name }}.errors import UsageError, UserError
from {{ cookiecutter.package_name }}.tasks import get_task, model_options

from .conftest import PROJECT_ROOT, TRAIN_CONFIG

SERVE_CONFIG = PROJECT_ROOT / "configs" / "serve.yaml"


def test_the_config_file_selects_the_task_and_defaults_fill_the_rest():
    config = load_config(TRAIN_CONFIG)
    assert config.task == "digits" and config.device == "auto"
    assert config.optim.epochs == Config().optim.epochs > 0  # the defaults live once, in config.py
    assert config.model == dataclasses.asdict(get_task("digits").Options())  # and in the task


def test_overrides_are_typed_and_nested():
    config = load_config(TRAIN_CONFIG, ["optim.lr=0.01", "optim.epochs=3", "device=cpu", "model.dropout=0"])
    assert (config.optim.lr, config.optim.epochs, config.device) == (0.01, 3, "cpu")
    assert config.model["dropout"] == 0.0 and isinstance(config.model["dropout"], float)


def test_each_task_has_its_own_model_options(task_name, task):
    config = load_config(TRAIN_CONFIG, [f"task={task_name}"])
    assert config.model == dataclasses.asdict(task.Options())


def test_parse_override_nests_keys():
    assert parse_override("data.batch_size=128") == {"data": {"batch_size": 128}}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "unknown config key 'optim.lrr'"),
        ("optim.epochs=many", "must be int"),
        ("optim.epochs=2.5", "must be int"),
        ("optim=3", "is a section"),
        ("epochs", "must look like section.key=value"),
        ("optim.epochs=0", "optim.epochs must be positive"),
        ("data.test_fraction=0.9", "must leave samples to train on"),
        ("task=nope", "unknown task 'nope'; available tasks:"),
        ("task=", "no task configured"),
        ("model.widht=3", "unknown config key 'model.widht'"),
        ("model.dropout=1.5", r"model.dropout must be in \[0, 1\)"),
    ],
    ids=[
        "unknown-key",
        "not-number",
        "float-for-int",
        "section",
        "no-equals",
        "zero-epochs",
        "no-train-data",
        "unknown-task",
        "no-task",
        "unknown-model-key",
        "bad-model-value",
    ],
)
def test_bad_overrides_are_usage_errors(override, message):
    with pytest.raises(UsageError, match=message):
        load_config(TRAIN_CONFIG, [override])


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_described_config_is_the_resolved_config_as_yaml(task_name, task):
    config = load_config(TRAIN_CONFIG, [f"task={task_name}", "seed=5"])
    lines = describe(config, model_options(task, config.model))
    assert yaml.safe_load("\n".join(lines)) == config.to_dict()
    assert all("#" in line for line in lines if not line.rstrip().endswith(":")), "every key is explained"
    serve = load_config(SERVE_CONFIG, ["port=9001"], kind=ServeConfig)
    assert yaml.safe_load("\n".join(describe(serve))) == serve.to_dict()
