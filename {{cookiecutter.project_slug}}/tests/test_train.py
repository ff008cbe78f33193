import json
import shutil

import pytest
import torch

from {{ cookiecutter.package_name }}.checkpoint import load_model, read
from {{ cookiecutter.package_name }}.errors import UserError
from {{ cookiecutter.package_name }}.evaluate import evaluate
from {{ cookiecutter.package_name }}.train import train
from {{ cookiecutter.package_name }}.training.loop import Precision

from .conftest import TASKS, task_config


def test_training_writes_a_complete_run(trained, task_name):
    run = trained.run_dir
    for name in ("config.yaml", "manifest.json", "metrics.json", "curves.png", "checkpoint.pt"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["task"] == task_name
    assert metrics["test_accuracy"] > 0.5  # two epochs; the full default runs reach >= 0.95
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "manifest.json").read_text())["status"] == "complete"


def test_promoted_model_records_its_task_and_preprocessing(trained, task_name, task, splits):
    assert trained.model_path.read_bytes() == (trained.run_dir / "checkpoint.pt").read_bytes()
    payload = read(trained.model_path)
    assert payload["task"] == task_name and payload["config"]["task"] == task_name
    fitted = task.fit_preprocessing(splits.train)
    assert payload["preprocessing"].keys() == fitted.keys()
    loaded = load_model(trained.model_path)
    assert loaded.task_name == task_name and not loaded.model.training
    assert payload["metrics"]["test_accuracy"] == trained.metrics["test_accuracy"]
    logits = loaded.model(torch.from_numpy(splits.test.inputs[:3]))
    assert tuple(logits.shape) == (3, len(task.class_names))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_its_model_loads_in_fp32(precision, trained, task_name, tmp_path):
    config = task_config(task_name, tmp_path, "optim.epochs=2", f"precision={precision}")
    result = train(config, progress=False)
    assert result.metrics["precision"] == precision
    assert result.metrics["test_accuracy"] >= trained.metrics["test_accuracy"] - 0.05
    scored = evaluate(result.model_path, "cpu")  # fp32, whatever trained it
    assert abs(scored["test_accuracy"] - result.metrics["test_accuracy"]) <= 0.02
    (latest, *_) = sorted((result.run_dir / "checkpoints").glob("*.pt"), reverse=True)
    assert bool(read(latest)["scaler_state"]) == (precision == "fp16")  # the loss scale resumes too


@pytest.mark.slow
@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("cc", "gcc", "clang")), reason="torch.compile needs a C compiler"
)
def test_compiled_training_saves_plain_weights(tmp_path):
    """One task: compiling is the slowest step of the suite, and the same for every task."""
    result = train(task_config(TASKS[0], tmp_path, "optim.epochs=1", "compile=true"), progress=False)
    payload = read(result.model_path)
    assert not any(key.startswith("_orig_mod.") for key in payload["model_state"])
    assert load_model(result.model_path).task_name == TASKS[0]


def test_bf16_is_refused_on_a_gpu_without_it(monkeypatch):
    """The GPU is the one thing missing here: only its two answers are stood in for."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    with pytest.raises(UserError, match="Tesla V100-SXM2-16GB has none: use precision=fp16"):
        Precision("bf16", torch.device("cuda", 0))
    assert Precision("bf16", torch.device("cpu")).dtype == torch.bfloat16
