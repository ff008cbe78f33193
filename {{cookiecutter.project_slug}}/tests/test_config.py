import pytest

from {{ cookiecutter.package_name }}.config import load_config, parse_override
from {{ cookiecutter.package_name }}.errors import UsageError, UserError

from .conftest import PROJECT_ROOT

CONFIG = PROJECT_ROOT / "configs" / "train.yaml"


def test_default_config_file_loads():
    config = load_config(CONFIG)
    assert config.device == "auto"
    assert config.optim.epochs > 0


def test_overrides_are_typed_and_nested():
    config = load_config(CONFIG, ["optim.lr=0.01", "optim.epochs=3", "device=cpu", "model.dropout=0"])
    assert (config.optim.lr, config.optim.epochs, config.device) == (0.01, 3, "cpu")
    assert config.model.dropout == 0.0 and isinstance(config.model.dropout, float)


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
    ],
    ids=[
        "unknown-key",
        "not-number",
        "float-for-int",
        "section",
        "no-equals",
        "zero-epochs",
        "no-train-data",
    ],
)
def test_bad_overrides_are_usage_errors(override, message):
    with pytest.raises(UsageError, match=message):
        load_config(CONFIG, [override])


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
