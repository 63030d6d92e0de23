"""data.py: the bundled MNIST sample and its split, the splits of every dataset, and the augmentation."""
import dataclasses

import numpy as np
import pytest
import torch

import data
from model import preprocessing


def test_mnist_sample_is_5000_real_digits_split_without_overlap():
    images, labels = data.load_mnist_sample_u8()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    # MNIST's own geometry: white digit on black, the 20x20 box inside a 4-pixel margin (mostly).
    assert images[:, :2].max() == 0 or (images[:, :2] > 0).mean() < 0.001
    splits = data.builtin_splits("mnist-sample", (0.15, 0.15), seed=0)
    assert [len(part[1]) for part in splits.values()] == [3500, 750, 750]
    rows = {name: {row.tobytes() for row in part[0].reshape(len(part[0]), -1)} for name, part in splits.items()}
    assert not (rows["train"] & rows["test"] or rows["validation"] & rows["test"] or rows["train"] & rows["validation"])
    assert np.bincount(splits["test"][1]).tolist() == [75] * 10


def test_the_default_test_split_is_seed_0s_750_digits_of_the_sample():
    images, labels = data.default_test_split()
    expected_images, expected_labels = data.builtin_splits("mnist-sample", (0.15, 0.15), seed=0)["test"]
    assert np.array_equal(images, expected_images) and np.array_equal(labels, expected_labels)


def test_mnist_sample_refuses_a_file_that_is_not_the_pinned_one(monkeypatch):
    monkeypatch.setattr(data, "MNIST_SAMPLE_SHA256", "0" * 64)
    with pytest.raises(SystemExit, match="not the pinned MNIST sample"):
        data.load_mnist_sample_u8()


def test_load_splits_brings_a_bundled_dataset_to_mnist_geometry():
    train_split, val_split, test_split, names = data.load_splits("digits", None, (0.15, 0.15), 0,
                                                                 data.DIGITS_RESOLUTION)
    assert names == list(preprocessing.DEFAULT_LABELS)
    assert len(train_split) + len(val_split) + len(test_split) == 1797 and len(test_split) == 270
    assert train_split.images.shape[1:] == (28, 28) and train_split.images.dtype == torch.float32
    assert 0.0 <= float(train_split.images.min()) and float(train_split.images.max()) <= 1.0
    with pytest.raises(SystemExit, match="--data-dir"):
        data.load_splits("folder", None, (0.15, 0.15), 0, data.DIGITS_RESOLUTION)


@pytest.mark.parametrize("name", sorted(data.AUGMENTATIONS))
def test_augmentation_keeps_shape_and_range_and_follows_the_seed(name):
    images = torch.from_numpy(data.load_mnist_sample_u8()[0][:32].astype(np.float32) / 255.0)
    policy = dataclasses.replace(data.AUGMENTATIONS[name], elastic=1.5)
    first = data.augment(images, torch.Generator().manual_seed(1), policy)
    again = data.augment(images, torch.Generator().manual_seed(1), policy)
    assert first.shape == images.shape and first.dtype == torch.float32
    assert 0.0 <= float(first.min()) and float(first.max()) <= 1.0
    assert torch.equal(first, again)
    changed = (first - images).abs().flatten(1).mean(1)
    assert bool((changed > 0.01).all())  # every image moved
    assert float((first.flatten(1).sum(1) / images.flatten(1).sum(1)).min()) > 0.3  # the digit is still there


def test_elastic_displacement_is_smooth_and_sized_as_asked():
    field = data.elastic_displacement(64, 2.0, torch.Generator().manual_seed(0))
    assert field.shape == (64, 28, 28, 2)
    pixels = field * 14  # grid units -> pixels
    assert abs(float(pixels.std()) - 2.0) < 0.05
    neighbour_step = (pixels[:, 1:] - pixels[:, :-1]).abs().mean()
    assert float(neighbour_step) < 0.25 * float(pixels.abs().mean())  # smooth: neighbours move together


def test_split_is_disjoint_and_stratified():
    labels = np.repeat(np.arange(10), 50)
    train_idx, val_idx, test_idx = data.stratified_split(labels, (0.2, 0.2), seed=3)
    assert not (set(train_idx) & set(val_idx) or set(train_idx) & set(test_idx) or set(val_idx) & set(test_idx))
    assert len(train_idx) + len(val_idx) + len(test_idx) == 500
    assert np.bincount(labels[test_idx]).tolist() == [10] * 10
