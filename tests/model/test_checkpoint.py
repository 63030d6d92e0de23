"""model/checkpoint.py: the one reader and writer of digit_cnn.pt, and DigitCNNConfig, the architecture it records."""
import dataclasses
import pickle

import pytest
import torch

from model import checkpoint, preprocessing
from model.checkpoint import load_checkpoint, save_checkpoint
from model.digit_cnn import DigitCNN, DigitCNNConfig

SHIPPED = {"in_channels": 1, "conv_channels": [16, 32], "hidden": [120, 84], "num_classes": 10, "image_size": 28}


def test_the_default_config_is_the_shipped_architecture_as_checkpoints_record_it():
    assert DigitCNNConfig().to_dict() == SHIPPED
    assert DigitCNNConfig.from_dict(SHIPPED) == DigitCNNConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        DigitCNNConfig().num_classes = 3


@pytest.mark.parametrize("fields, words", [
    ({**SHIPPED, "conv_chanels": [8, 16]}, "unknown keys ['conv_chanels']"),
    ({key: value for key, value in SHIPPED.items() if key != "hidden"}, "missing keys ['hidden']"),
])
def test_a_misspelled_unknown_or_missing_config_key_fails_loudly(fields, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        DigitCNNConfig.from_dict(fields)


def small_model(config: DigitCNNConfig) -> DigitCNN:
    torch.manual_seed(0)
    model = DigitCNN(config)
    model.train()
    model(torch.randn(8, 1, 28, 28))  # moves BatchNorm's running statistics off their defaults
    return model.eval()


def test_a_checkpoint_rebuilds_its_own_network_with_its_record(tmp_path):
    config = DigitCNNConfig(conv_channels=(6, 16), num_classes=4)  # not the defaults: the record must carry them
    model = small_model(config)
    path = tmp_path / checkpoint.WEIGHTS_FILE
    save_checkpoint(path, model, config, labels=["a", "b", "c", "d"], resolution=10, dataset="folder")
    loaded, loaded_config, record = load_checkpoint(path, torch.device("cpu"))
    assert loaded_config == config and not loaded.training
    assert record == {"arch": config.to_dict(), "labels": ["a", "b", "c", "d"], "dataset": "folder",
                      "preprocessing": {"image_size": preprocessing.IMAGE_SIZE, "mean": preprocessing.MEAN,
                                        "std": preprocessing.STD, "resolution": 10}}
    assert checkpoint.training_resolution(record) == 10
    inputs = torch.randn(3, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(loaded(inputs), model(inputs))
    # The file holds plain data and tensors only: torch.load's safe mode reads it.
    assert set(torch.load(path, weights_only=True)) == {"arch", "state_dict", "labels", "preprocessing", "dataset"}


def test_a_record_without_a_resolution_serves_at_full_resolution():
    assert checkpoint.training_resolution({"arch": SHIPPED}) == preprocessing.DIGIT_BOX


def test_a_checkpoint_with_an_unknown_architecture_key_or_other_weights_is_refused(tmp_path):
    config = DigitCNNConfig()
    path = tmp_path / "model.pt"
    save_checkpoint(path, small_model(config), config, labels=preprocessing.DEFAULT_LABELS, resolution=20,
                    dataset="mnist-sample")
    saved = torch.load(path, weights_only=True)
    torch.save({**saved, "arch": {**saved["arch"], "dropout": 0.5}}, path)
    with pytest.raises(ValueError, match="unknown keys \\['dropout'\\]"):
        load_checkpoint(path)
    torch.save({**saved, "arch": {**saved["arch"], "hidden": [64, 32]}}, path)  # weights of another shape
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_checkpoint(path)


class Payload:
    def __reduce__(self):
        return print, ("unpickled",)


def test_a_checkpoint_holding_a_pickled_object_is_never_deserialised(tmp_path):
    config = DigitCNNConfig()
    path = tmp_path / "model.pt"
    save_checkpoint(path, small_model(config), config, labels=preprocessing.DEFAULT_LABELS, resolution=20,
                    dataset="mnist-sample")
    torch.save({**torch.load(path, weights_only=True), "extra": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(path)
