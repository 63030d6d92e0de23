"""The digit classifier network. One nn.Module, as TorchServe's model loader requires."""
import torch
from torch import nn


class DigitCNN(nn.Module):
    """LeNet-style CNN on 1x28x28 inputs.

    Two conv blocks (5x5 conv -> BatchNorm -> ReLU -> 2x2 max-pool) take 28x28 to 32 maps of 4x4,
    then three linear layers classify. Constructor defaults are the shipped architecture; train.py
    records the arguments beside the weights so the two can never drift apart. The conv layers are
    wider than LeNet-5's (6, 16): on 3,500 real MNIST digits that was worth ~0.3 points of validation
    accuracy for ~1.2x the inference time (README "Training data").
    """

    def __init__(
        self,
        in_channels: int = 1,
        conv_channels: tuple[int, int] = (16, 32),
        hidden: tuple[int, int] = (120, 84),
        num_classes: int = 10,
        image_size: int = 28,
    ):
        super().__init__()
        c1, c2 = conv_channels
        blocks = []
        for cin, cout in ((in_channels, c1), (c1, c2)):
            blocks += [nn.Conv2d(cin, cout, kernel_size=5), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks)
        side = ((image_size - 4) // 2 - 4) // 2  # two (5x5 valid conv, 2x2 pool) stages: 28 -> 12 -> 4
        h1, h2 = hidden
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side * side, h1),
            nn.ReLU(),
            nn.Linear(h1, h2),
            nn.ReLU(),
            nn.Linear(h2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
