import json

import torch

from {{ cookiecutter.package_name }}.checkpoint import load_model, read


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
