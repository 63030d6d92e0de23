"""The digit classifier network. One nn.Module, as TorchServe's model loader requires."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DigitCNNConfig:
    """DigitCNN's architecture. The defaults are the shipped one; the checkpoint records every field beside the
    weights (model/checkpoint.py), so a network is rebuilt as it was trained even after a default changes."""

    in_channels: int = 1  # grey images
    # Wider than LeNet-5's (6, 16): on 3,500 real MNIST digits that gained 0.2-0.3 points of validation accuracy for
    # 1.3-1.7x LeNet-5's per-image model time (docs/training.md "Making 5,000 digits count").
    conv_channels: tuple[int, int] = (16, 32)
    hidden: tuple[int, int] = (120, 84)  # LeNet-5's two hidden linear layers
    num_classes: int = 10  # the digits 0-9; another dataset (train.py --dataset folder) has its own count
    image_size: int = 28  # side of the input frame: MNIST's geometry (model/preprocessing.py IMAGE_SIZE)

    def to_dict(self) -> dict:
        """Plain data for the checkpoint and metrics.json: pairs as lists, as JSON and torch.save keep them."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, fields: dict) -> DigitCNNConfig:
        """The inverse of to_dict. Every field must be there and no other: a misspelled or unknown key, or one
        missing, fails loudly instead of leaving a default in its place."""
        known = [field.name for field in dataclasses.fields(cls)]
        unknown, missing = sorted(set(fields) - set(known)), [name for name in known if name not in fields]
        if unknown or missing:
            raise ValueError(f"DigitCNNConfig: unknown keys {unknown}, missing keys {missing}; it has {known}")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()})


class DigitCNN(nn.Module):
    """LeNet-style CNN on 1x28x28 inputs.

    Two conv blocks (5x5 conv -> BatchNorm -> ReLU -> 2x2 max-pool) take 28x28 to 32 maps of 4x4,
    then three linear layers classify. DigitCNNConfig's defaults are the shipped architecture.
    """

    def __init__(self, config: DigitCNNConfig = DigitCNNConfig()):
        super().__init__()
        c1, c2 = config.conv_channels
        blocks = []
        for cin, cout in ((config.in_channels, c1), (c1, c2)):
            blocks += [nn.Conv2d(cin, cout, kernel_size=5), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks)
        side = ((config.image_size - 4) // 2 - 4) // 2  # two (5x5 valid conv, 2x2 pool) stages: 28 -> 12 -> 4
        h1, h2 = config.hidden
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side * side, h1),
            nn.ReLU(),
            nn.Linear(h1, h2),
            nn.ReLU(),
            nn.Linear(h2, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
