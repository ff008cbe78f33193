import json

import torch

from {{ cookiecutter.package_name }}.checkpoint import load_model


def test_training_writes_a_complete_run(trained):
    run = trained.run_dir
    for name in ("config.yaml", "metrics.json", "curves.png", "checkpoint.pt"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 2
    assert metrics["test_accuracy"] > 0.5  # two epochs; the full default run reaches >= 0.95
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_promoted_model_matches_the_run_checkpoint(trained):
    assert trained.model_path.read_bytes() == (trained.run_dir / "checkpoint.pt").read_bytes()
    model, payload = load_model(trained.model_path)
    assert payload["metrics"]["test_accuracy"] == trained.metrics["test_accuracy"]
    assert not model.training
    assert tuple(model(torch.zeros(1, 1, 8, 8)).shape) == (1, 10)
