"""The checkpoint format: the one writer (train.py calls save_checkpoint) and reader (the handler calls
load_checkpoint) of digit_cnn.pt.

A checkpoint is plain data for torch.save, so that torch.load(weights_only=True) reads it and no pickled object is
ever deserialised:
    arch           DigitCNNConfig.to_dict(): the architecture, every field written out
    state_dict     the weights, on the CPU
    labels         class names by index
    preprocessing  image_size, mean, std (model/preprocessing.py's when trained) and resolution: the size the digit
                   was rasterised at in training, which serving uses for every request too
    dataset        train.py's --dataset
Whoever loads a checkpoint that came from elsewhere checks its integrity before calling load_checkpoint (the handler
compares its SHA-256 with the one recorded in the archive).
"""
from __future__ import annotations

import os

import torch

from model import preprocessing
from model.digit_cnn import DigitCNN, DigitCNNConfig

WEIGHTS_FILE = "digit_cnn.pt"  # train.py writes it under this name; scripts/package.sh puts it in the .mar


def save_checkpoint(path: str | os.PathLike, model: DigitCNN, config: DigitCNNConfig, *, labels: list[str],
                    resolution: int, dataset: str) -> None:
    """Write `model` (built from `config`) with what serving needs to rebuild it and feed it as in training."""
    checkpoint = {
        "arch": config.to_dict(),
        "state_dict": {key: value.cpu() for key, value in model.state_dict().items()},
        "labels": list(labels),
        "preprocessing": {
            "image_size": preprocessing.IMAGE_SIZE,
            "mean": preprocessing.MEAN,
            "std": preprocessing.STD,
            "resolution": resolution,
        },
        "dataset": dataset,
    }
    torch.save(checkpoint, path)


def load_checkpoint(path: str | os.PathLike,
                    device: torch.device | str = "cpu") -> tuple[DigitCNN, DigitCNNConfig, dict]:
    """The network rebuilt from its recorded architecture with its weights (strict), in eval mode on `device`; its
    config; and the record: every other entry of the checkpoint ("arch", "labels", "preprocessing", "dataset").

    Tensors and plain data only (weights_only=True). An architecture with an unknown or missing field is refused
    (ValueError), as are weights that do not fit it.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    config = DigitCNNConfig.from_dict(checkpoint["arch"])
    model = DigitCNN(config)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    model.to(device).eval()
    record = {key: value for key, value in checkpoint.items() if key != "state_dict"}
    return model, config, record


def training_resolution(record: dict) -> int:
    """The resolution the model was trained at, from a checkpoint's record (model/preprocessing.py's DIGIT_BOX, no
    reduction, where it records none)."""
    return int(record.get("preprocessing", {}).get("resolution", preprocessing.DIGIT_BOX))
