"""train.py: outputs, accuracy of the default run, determinism, flags."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import train
from tests.conftest import ROOT


def test_default_run_writes_every_output(artifacts):
    for name in ("digit_cnn.pt", "index_to_name.json", "metrics.json", "training_curves.png", "confusion_matrix.png"):
        assert (artifacts / name).stat().st_size > 0, name
    for plot in ("training_curves.png", "confusion_matrix.png"):
        assert Image.open(artifacts / plot).size[0] > 200
    assert json.loads((artifacts / "index_to_name.json").read_text()) == {str(i): str(i) for i in range(10)}
    assert len(list((artifacts / "samples").glob("*.png"))) == 20


def test_default_run_reaches_98_percent_on_the_test_split(metrics):
    assert metrics["test_accuracy"] >= 0.98
    assert metrics["sizes"]["test"] == 270
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 270
    assert abs(np.trace(matrix) / matrix.sum() - metrics["test_accuracy"]) < 1e-9
    assert set(metrics["per_class_accuracy"]) == {str(i) for i in range(10)}


def test_split_is_disjoint_and_stratified():
    labels = np.repeat(np.arange(10), 50)
    train_idx, val_idx, test_idx = train.stratified_split(labels, (0.2, 0.2), seed=3)
    assert not (set(train_idx) & set(val_idx) or set(train_idx) & set(test_idx) or set(val_idx) & set(test_idx))
    assert len(train_idx) + len(val_idx) + len(test_idx) == 500
    assert np.bincount(labels[test_idx]).tolist() == [10] * 10


def dry_run(out):
    return train.main(["--dry-run", "--output-dir", str(out), "--seed", "7"])


def test_dry_run_is_deterministic_on_cpu(tmp_path):
    dry_run(tmp_path / "a")
    dry_run(tmp_path / "b")
    first = torch.load(tmp_path / "a" / train.WEIGHTS_FILE, weights_only=True)["state_dict"]
    second = torch.load(tmp_path / "b" / train.WEIGHTS_FILE, weights_only=True)["state_dict"]
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_folder_dataset_uses_subfolder_names(tmp_path):
    from tests.conftest import sklearn_scans_u8

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
    from tests.conftest import sklearn_scans_u8

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
    checkpoint = torch.load(tmp_path / "out" / train.WEIGHTS_FILE, weights_only=True)
    assert checkpoint["preprocessing"]["resolution"] == 20


def test_help_shows_every_default():
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True, check=True)
    for flag in ("--epochs", "--batch-size", "--lr", "--seed", "--device", "--output-dir", "--dry-run"):
        assert flag in result.stdout
    assert "(default: 30)" in result.stdout and "(default: artifacts)" in result.stdout


def test_misspelled_flag_fails():
    with pytest.raises(SystemExit):
        train.main(["--epoch", "3"])
