import dataclasses

import pytest
import yaml

from {{ cookiecutter.package_name }}.config import Config, ServeConfig, describe, load_config, parse_override
from {{ cookiecutter.package_name }}.errors import UsageError, UserError
from {{ cookiecutter.package_name }}.tasks import get_task, model_options

from .conftest import PROJECT_ROOT, TRAIN_CONFIG
from .test_cli import run

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
        ("optim.lr=0", "optim.lr must be positive"),
        ("optim.lr=.nan", "'optim.lr' must be a finite number, got nan"),
        ("optim.lr=-.inf", "'optim.lr' must be a finite number, got -inf"),
        ("optim.weight_decay=-1", "optim.weight_decay must be 0 or more"),
        ("data.batch_size=0", "data.batch_size must be positive"),
        ("data.batch_size=1e3", "must be int"),
        ("data.batch_size=100000000000000000000", "'data.batch_size' is out of range"),
        ("data.num_workers=-1", "data.num_workers must be 0 or more"),
        ("data.val_fraction=0", "data.val_fraction must be between 0 and 1"),
        ("data.test_fraction=1", "data.test_fraction must be between 0 and 1"),
        ("output.checkpoint_every=0", "output.checkpoint_every must be positive"),
        ("output.keep_checkpoints=0", "output.keep_checkpoints must be positive"),
        ("output.runs_dir=", "output.runs_dir must name a directory"),
        ("output.model_path=", "output.model_path must name a file"),
        (r'output.runs_dir="runs\0x"', "must not contain a NUL character"),
        ("deterministic='true'", "config key 'deterministic' must be bool, got 'true'"),
        ("compile=1", "config key 'compile' must be bool, got 1"),
        ("seed=-1", "seed must be 0 to 4294967295, got -1"),
        ("seed=4294967296", "seed must be 0 to 4294967295"),
        ("model.dropout=.nan", "must be a finite number"),
        ("seed=[1", r"line 1, column 3: expected ',' or '\]'"),
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
        "zero-lr",
        "nan-lr",
        "infinite-lr",
        "negative-weight-decay",
        "zero-batch",
        "batch-as-exponent",
        "batch-over-64-bits",
        "negative-workers",
        "no-validation-data",
        "no-training-data",
        "never-checkpoint",
        "keep-no-checkpoints",
        "empty-runs-dir",
        "empty-model-path",
        "nul-in-path",
        "bool-as-string",
        "bool-as-int",
        "negative-seed",
        "seed-over-32-bits",
        "nan-model-option",
        "unclosed-bracket",
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


def test_floats_may_be_written_without_a_dot():
    """YAML 1.1 reads 1e-3 as a string; a float field takes it as the number it means."""
    assert load_config(TRAIN_CONFIG, ["optim.lr=1e-3"]).optim.lr == 0.001


def test_every_process_seed_is_in_numpys_range():
    config = load_config(TRAIN_CONFIG, ["seed=4294967295"])
    config.check_processes(1)
    with pytest.raises(UsageError, match=r"seed=4294967295 \+ 1 \(the last process's rank\)"):
        config.check_processes(2)


# --- through the CLI: one line, the exit code, nothing written ---------------------------------------


def train_in(tmp_path, *args):
    """`train` writing (if it ever got that far) only into `tmp_path`."""
    outputs = [f"output.runs_dir={tmp_path / 'runs'}", f"output.model_path={tmp_path / 'model.pt'}"]
    return run("train", "--no-progress", "device=cpu", "optim.epochs=1", *outputs, *args)


def assert_refused(result, exit_code, message):
    assert result.returncode == exit_code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"task: digits\nseed: \xff\n", "is not UTF-8 text: byte 0xff on line 2"),
        (
            b"task: digits\noptim: {epochs: 3\n",
            "is not valid YAML: line 3, column 1: expected ',' or '}', but got '<stream end>' "
            "(while parsing a flow mapping at line 2, column 8)",
        ),
        (
            b"task: digits\nseed: 4\x01\n",
            "is not valid YAML: line 2, column 8: unacceptable character #x0001",
        ),
        (b"- task\n- digits\n", "must hold `section: values` mappings, not a list"),
        (b"digits\n", "must hold `section: values` mappings, not a str"),
        (b"a: " + b"[" * 5000 + b"]" * 5000, "is not valid YAML: nested too deeply"),
    ],
    ids=["not-utf8", "malformed", "control-character", "a-list", "a-string", "too-deep"],
)
def test_a_bad_config_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "train.yaml"
    path.write_bytes(content)
    assert_refused(train_in(tmp_path, "--config", path), 1, f"config file '{path}' {message}")
    assert [p.name for p in tmp_path.iterdir()] == ["train.yaml"]


def test_a_config_file_that_is_a_directory_or_missing(tmp_path):
    assert_refused(train_in(tmp_path, "--config", tmp_path), 1, "is a directory; give a YAML file")
    assert_refused(train_in(tmp_path, "--config", tmp_path / "none.yaml"), 1, "none.yaml' not found")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=-1", "seed must be 0 to 4294967295, got -1"),
        ("seed=99999999999", "seed must be 0 to 4294967295, got 99999999999"),
        ("optim.weight_decay=-1", "optim.weight_decay must be 0 or more"),
        ("optim.lr=.inf", "config key 'optim.lr' must be a finite number, got inf"),
    ],
    ids=["negative-seed", "seed-over-32-bits", "negative-weight-decay", "infinite-lr"],
)
def test_out_of_range_values_are_usage_errors(tmp_path, override, message):
    assert_refused(train_in(tmp_path, override), 2, message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # starts a training process
def test_an_unwritable_runs_dir_is_refused_before_training(tmp_path):
    (tmp_path / "a-file").write_text("")
    result = train_in(tmp_path, "output.runs_dir=/proc/nope")
    message = "output.runs_dir='/proc/nope' cannot be written: cannot create anything in '/proc'"
    assert_refused(result, 1, message)
    result = train_in(tmp_path, f"output.runs_dir={tmp_path / 'a-file' / 'runs'}")
    assert_refused(result, 1, f"cannot be written: '{tmp_path / 'a-file'}' is not a directory")
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"], "no run directory was begun"


@pytest.mark.slow  # starts a training process
def test_a_model_path_that_is_a_directory_is_refused_before_training(tmp_path):
    """Not after training, with the run's manifest already saying complete."""
    (tmp_path / "model.pt").mkdir()
    assert_refused(train_in(tmp_path), 1, f"output.model_path='{tmp_path / 'model.pt'}' is a directory")
    result = train_in(tmp_path, "output.model_path=/proc/nope/model.pt")
    assert_refused(result, 1, "output.model_path='/proc/nope/model.pt' cannot be written")
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"] and not any((tmp_path / "model.pt").iterdir())
