import numpy as np

from {{ cookiecutter.package_name }}.data import PIXEL_MAX, load_splits, make_loader, to_tensor


def test_split_is_complete_stratified_and_seeded(splits):
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == 1797
    assert abs(sizes[2] - 0.2 * 1797) <= 1
    for split in (splits.train, splits.val, splits.test):
        assert set(np.unique(split.labels)) == set(range(10))
        assert split.images.shape[1:] == (8, 8)
        assert split.images.min() >= 0 and split.images.max() <= PIXEL_MAX
    again = load_splits(seed=42, val_fraction=0.15, test_fraction=0.2)
    assert np.array_equal(again.test.images, splits.test.images)
    other = load_splits(seed=7, val_fraction=0.15, test_fraction=0.2)
    assert not np.array_equal(other.test.labels, splits.test.labels)


def test_to_tensor_normalises_to_unit_range(splits):
    batch = to_tensor(splits.test.images[:5])
    assert tuple(batch.shape) == (5, 1, 8, 8)
    assert float(batch.max()) <= 1.0 and float(batch.min()) >= 0.0


def test_loader_shuffle_is_reproducible(splits):
    first = [y.tolist() for _, y in make_loader(splits.train, 32, shuffle=True, seed=1)]
    second = [y.tolist() for _, y in make_loader(splits.train, 32, shuffle=True, seed=1)]
    assert first == second
