import numpy as np
import pytest
import torch

from {{ cookiecutter.package_name }}.checkpoint import load_model, read
from {{ cookiecutter.package_name }}.errors import UserError
from {{ cookiecutter.package_name }}.predict import Predictor, read_inputs

from .conftest import TASKS, bad_arrays, valid_sample


def test_npy_shapes_follow_the_input_spec(task, tmp_path):
    spec, one = task.input_spec, valid_sample(task.input_spec)
    shapes = {spec.shape: 1, (3, *spec.shape): 3, (spec.size,): 1, (2, spec.size): 2}
    for shape, count in shapes.items():
        path = tmp_path / "x.npy"
        np.save(path, np.broadcast_to(one.ravel()[0], shape))
        named = read_inputs(path, task)
        assert len(named) == count and all(sample.shape == spec.shape for _, sample in named)
        single = shape in (spec.shape, (spec.size,))  # one sample keeps the file's name
        assert [name for name, _ in named] == (
            [str(path)] if single else [f"{path}[{i}]" for i in range(count)]
        )


def test_bad_arrays_are_refused_with_the_reason(task):
    for array, message in bad_arrays(task.input_spec).values():
        with pytest.raises(UserError, match=message):
            task.input_spec.validate(array, "x.npy")


def test_bad_files_are_refused(task, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="no such file"):
        read_inputs(tmp_path / "missing.npy", task)
    with pytest.raises(UserError, match=r"unsupported file type \.txt; use \.npy"):
        read_inputs(tmp_path / "notes.txt", task)
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY broken")
    with pytest.raises(UserError, match=r"not a readable \.npy array"):
        read_inputs(tmp_path / "broken.npy", task)
    for suffix in task.file_types:
        (tmp_path / f"broken{suffix}").write_bytes(b"\x00\x01garbage")
        with pytest.raises(UserError, match=f"broken{suffix}"):
            read_inputs(tmp_path / f"broken{suffix}", task)


def test_predictions_are_probabilities_in_order(trained, task, splits):
    predictor = Predictor(trained.model_path, device="cpu")
    predictions = predictor.predict(splits.test.inputs[:16])
    assert len(predictions) == 16
    for pred in predictions:
        assert abs(sum(pred.probabilities) - 1) < 1e-5
        assert pred.label == int(np.argmax(pred.probabilities)) and pred.name == task.class_names[pred.label]
    single = predictor.predict(splits.test.inputs[5:6])[0]
    assert single.label == predictions[5].label


# --- a model that does not fit the configured task, or this version of the project ----------------


def test_a_model_of_another_task_is_one_line_naming_both(trained, task_name):
    other = next(name for name in TASKS if name != task_name)
    with pytest.raises(UserError, match=f"is a '{task_name}' model but the configured task is '{other}'"):
        load_model(trained.model_path, other)


def test_an_old_checkpoint_without_a_task(trained, tmp_path):
    payload = read(trained.model_path)
    old = {"format": 1, "model_state": payload["model_state"], "config": payload["config"], "metrics": {}}
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(UserError, match=r"records no task: it predates task plug-ins .*'digits'.*make train"):
        load_model(tmp_path / "old.pt", "digits")


def test_a_model_of_a_task_the_project_no_longer_has(trained, tmp_path):
    payload = {**read(trained.model_path), "task": "retired"}
    torch.save(payload, tmp_path / "retired.pt")
    with pytest.raises(UserError, match="a 'retired' model, a task this project no longer has"):
        load_model(tmp_path / "retired.pt")


def test_weights_that_no_longer_fit_the_tasks_model(trained, tmp_path):
    payload = read(trained.model_path)
    state = dict(payload["model_state"])
    name = next(iter(state))
    state[name] = torch.zeros(3, 3, 3)
    torch.save({**payload, "model_state": state}, tmp_path / "stale.pt")
    with pytest.raises(UserError, match=r"does not fit the current .* model \(.*\); retrain it"):
        load_model(tmp_path / "stale.pt")
