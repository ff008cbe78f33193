import numpy as np
import pytest
from PIL import Image

from {{ cookiecutter.package_name }}.errors import UserError
from {{ cookiecutter.package_name }}.predict import Predictor, image_to_sample, load_inputs, validate_samples

from .conftest import write_digit_png


@pytest.mark.parametrize("dark_on_light", [True, False], ids=["dark-on-light", "light-on-dark"])
def test_image_preprocessing_recovers_the_sample(splits, tmp_path, dark_on_light):
    sample = splits.test.images[0]
    path = write_digit_png(sample, tmp_path / "digit.png", dark_on_light=dark_on_light)
    recovered = image_to_sample(Image.open(path))
    assert recovered.shape == (8, 8)
    assert recovered.min() >= 0 and recovered.max() <= 16
    assert np.corrcoef(recovered.ravel(), sample.ravel())[0, 1] > 0.7


def test_transparent_png_is_flattened_onto_white(splits, tmp_path):
    sample = splits.test.images[1]
    alpha = (np.kron(sample / 16.0, np.ones((8, 8))) * 255).astype(np.uint8)
    rgba = np.zeros((*alpha.shape, 4), dtype=np.uint8)
    rgba[..., 3] = alpha  # black strokes, transparent background
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    recovered = image_to_sample(Image.open(tmp_path / "alpha.png"))
    assert np.corrcoef(recovered.ravel(), sample.ravel())[0, 1] > 0.7


@pytest.mark.parametrize(
    ("shape", "count"),
    [((8, 8), 1), ((3, 8, 8), 3), ((64,), 1), ((2, 64), 2)],
    ids=["one-8x8", "batch-8x8", "one-flat", "batch-flat"],
)
def test_npy_shapes(tmp_path, shape, count):
    path = tmp_path / "x.npy"
    np.save(path, np.full(shape, 4.0))
    named = load_inputs(path)
    assert len(named) == count
    assert all(sample.shape == (8, 8) for _, sample in named)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((8, 7)), "shape"),
        (np.zeros((0, 8, 8)), "no samples"),
        (np.full((8, 8), np.nan), "NaN"),
        (np.full((8, 8), 17.0), "training scale"),
        (np.full((8, 8), -1.0), "training scale"),
        (np.array([["a"] * 8] * 8), "numbers"),
    ],
    ids=["wrong-shape", "empty", "nan", "too-large", "negative", "strings"],
)
def test_bad_arrays_are_rejected(array, message):
    with pytest.raises(UserError, match=message):
        validate_samples(array, "x.npy")


def test_bad_files_are_rejected(tmp_path):
    (tmp_path / "fake.png").write_text("not an image")
    (tmp_path / "notes.txt").write_text("hello")
    Image.new("L", (20, 20), 255).save(tmp_path / "blank.png")
    with pytest.raises(UserError, match="no such file"):
        load_inputs(tmp_path / "missing.png")
    with pytest.raises(UserError, match="not a readable PNG/JPEG"):
        load_inputs(tmp_path / "fake.png")
    with pytest.raises(UserError, match="unsupported file type"):
        load_inputs(tmp_path / "notes.txt")
    with pytest.raises(UserError, match="no digit found"):
        load_inputs(tmp_path / "blank.png")


def test_predictions_are_probabilities_in_order(trained, splits):
    predictor = Predictor(trained.model_path, device="cpu")
    predictions = predictor.predict(splits.test.images[:16])
    assert len(predictions) == 16
    for pred in predictions:
        assert abs(sum(pred.probabilities) - 1) < 1e-5
        assert pred.label == int(np.argmax(pred.probabilities))
    single = predictor.predict(splits.test.images[5:6])[0]
    assert single.label == predictions[5].label
