"""Every task against the contract in tasks/base.py, the registry's errors, and the two examples'
own file readers."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from {{ cookiecutter.package_name }} import tasks
from {{ cookiecutter.package_name }}.errors import UsageError, UserError
from {{ cookiecutter.package_name }}.tasks import MEMBERS, build_model, get_task
from {{ cookiecutter.package_name }}.tasks.base import Task
from {{ cookiecutter.package_name }}.tasks.digits import image_to_sample

from .conftest import TASKS, write_digit_png, write_native_file


def test_the_examples_are_registered():
    assert {"digits", "breast_cancer"} <= set(TASKS)


def test_task_meets_the_contract(task):
    assert isinstance(task, Task) and all(hasattr(task, member) for member in MEMBERS)
    assert dataclasses.is_dataclass(task.Options) and len(task.class_names) >= 2
    assert all(suffix.startswith(".") and suffix != ".npy" for suffix in task.file_types)


def test_splits_are_complete_stratified_and_seeded(task):
    first = task.load_splits(42, 0.15, 0.2)
    parts = (first.train, first.val, first.test)
    classes = set(range(len(task.class_names)))
    for part in parts:
        assert part.inputs.shape[1:] == task.input_spec.shape and part.inputs.dtype == np.float32
        assert part.labels.dtype == np.int64 and set(np.unique(part.labels)) == classes
        task.input_spec.validate(part.inputs, "split")  # the data lies inside its own spec
    total = sum(len(p) for p in parts)
    assert abs(len(first.test) - 0.2 * total) <= 1
    again = task.load_splits(42, 0.15, 0.2)
    assert np.array_equal(again.test.inputs, first.test.inputs)
    assert not np.array_equal(task.load_splits(7, 0.15, 0.2).test.labels, first.test.labels)


def test_model_maps_samples_to_class_logits_and_learns(task, splits):
    preprocessing = task.fit_preprocessing(splits.train)
    model = build_model(task, {}, preprocessing)
    logits = model(torch.from_numpy(splits.train.inputs[:4]))
    assert tuple(logits.shape) == (4, len(task.class_names))
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_preprocessing_is_fitted_on_the_training_split_alone(task, splits):
    fitted = task.fit_preprocessing(splits.train)
    assert all(isinstance(v, torch.Tensor | int | float | str | list) for v in fitted.values())
    shifted = type(splits.train)(splits.train.inputs * 2, splits.train.labels)
    refit = task.fit_preprocessing(shifted)
    if fitted:  # statistics of the data, so other data gives other statistics
        assert any(
            not torch.equal(fitted[k], refit[k]) for k in fitted if isinstance(fitted[k], torch.Tensor)
        )


def test_native_files_read_back_as_samples(task_name, task, splits, tmp_path):
    samples = splits.test.inputs[:1] if ".png" in task.file_types else splits.test.inputs[:3]
    path = write_native_file(task_name, samples, tmp_path)
    array = task.input_spec.validate(
        np.load(path) if path.suffix == ".npy" else task.read_file(path.read_bytes(), path.name), "x"
    )
    assert array.shape == (len(samples), *task.input_spec.shape)


def test_unknown_task_lists_the_available_ones():
    with pytest.raises(UsageError, match=r"unknown task 'nope'; available tasks: .*digits"):
        get_task("nope")


def test_a_task_missing_a_member_is_named(tmp_path, monkeypatch):
    (tmp_path / "half_done.py").write_text("class Half:\n    class_names = ('a', 'b')\n\n\nTASK = Half()\n")
    (tmp_path / "no_task.py").write_text("x = 1\n")
    monkeypatch.setattr(tasks, "__path__", [*tasks.__path__, str(tmp_path)])
    with pytest.raises(UserError, match=r"task 'half_done' lacks input_spec, file_types, .*read_file"):
        get_task("half_done")
    with pytest.raises(
        UserError, match=r"task module 'no_task' defines no TASK; available tasks: .*half_done"
    ):
        get_task("no_task")


# --- digits: photos and scans of one digit ---------------------------------------------------------


@pytest.mark.parametrize("dark_on_light", [True, False], ids=["dark-on-light", "light-on-dark"])
def test_digit_images_recover_the_sample(tmp_path, dark_on_light):
    sample = get_task("digits").load_splits(42, 0.15, 0.2).test.inputs[0]
    path = write_digit_png(sample, tmp_path / "digit.png", dark_on_light=dark_on_light)
    recovered = image_to_sample(Image.open(path))
    assert recovered.shape == (8, 8) and recovered.min() >= 0 and recovered.max() <= 16
    assert np.corrcoef(recovered.ravel(), sample.ravel())[0, 1] > 0.7


def test_transparent_png_is_flattened_onto_white(tmp_path):
    sample = get_task("digits").load_splits(42, 0.15, 0.2).test.inputs[1]
    alpha = (np.kron(sample / 16.0, np.ones((8, 8))) * 255).astype(np.uint8)
    rgba = np.zeros((*alpha.shape, 4), dtype=np.uint8)
    rgba[..., 3] = alpha  # black strokes, transparent background
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    recovered = image_to_sample(Image.open(tmp_path / "alpha.png"))
    assert np.corrcoef(recovered.ravel(), sample.ravel())[0, 1] > 0.7


def test_bad_images_are_one_line_errors(tmp_path):
    digits = get_task("digits")
    Image.new("L", (20, 20), 255).save(tmp_path / "blank.png")
    with pytest.raises(UserError, match=r"blank\.png: no digit found"):
        digits.read_file((tmp_path / "blank.png").read_bytes(), "blank.png")
    with pytest.raises(UserError, match=r"fake\.png: not a readable PNG/JPEG"):
        digits.read_file(b"not an image", "fake.png")


# --- breast_cancer: CSV rows ---------------------------------------------------------------------


def test_csv_header_may_reorder_the_columns():
    task = get_task("breast_cancer")
    sample = task.load_splits(42, 0.15, 0.2).test.inputs[0].astype(np.float64)
    names = list(task.input_spec.names)
    order = list(reversed(range(len(names))))
    text = ",".join(names[i] for i in order) + "\n" + ",".join(repr(float(sample[i])) for i in order) + "\n"
    assert np.array_equal(task.read_file(text.encode(), "x.csv")[0], sample)
    assert np.array_equal(
        task.read_file(",".join(repr(float(v)) for v in sample).encode(), "x.csv")[0], sample
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "x.csv: no data rows"),
        ("1,2,3\n", "row 1 has 3 values, expected 30"),
        (",".join(["1"] * 29 + ["abc"]), "row 1: 'abc' is not a number"),
        ("mean radius,bogus\n1,2\n", "header does not match the task's columns"),
    ],
    ids=["empty", "short-row", "not-a-number", "bad-header"],
)
def test_bad_csv_is_a_one_line_error(text, message):
    with pytest.raises(UserError, match=message):
        get_task("breast_cancer").read_file(text.encode(), "x.csv")
