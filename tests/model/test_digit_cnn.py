import torch
from torch import nn
from ts.utils.util import list_classes_from_module

import model.digit_cnn as digit_cnn_module
from model import preprocessing
from model.digit_cnn import DigitCNN, DigitCNNConfig


def test_output_shape_for_a_batch():
    model = DigitCNN().eval()
    with torch.inference_mode():
        out = model(torch.zeros(5, 1, preprocessing.IMAGE_SIZE, preprocessing.IMAGE_SIZE))
    assert out.shape == (5, preprocessing.NUM_CLASSES)


def test_default_architecture_is_the_shipped_one():
    model = DigitCNN()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 16, (5, 5)), (16, 32, (5, 5))]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2
    assert [(l.in_features, l.out_features) for l in linears] == [(32 * 4 * 4, 120), (120, 84), (84, 10)]


def test_model_file_defines_exactly_one_module_for_torchserves_loader():
    classes = list_classes_from_module(digit_cnn_module, nn.Module)
    assert classes == [DigitCNN]


def test_num_classes_is_configurable():
    assert DigitCNN(DigitCNNConfig(num_classes=4))(torch.zeros(2, 1, 28, 28)).shape == (2, 4)
