"""The handler's fixtures: an unpacked model directory and an initialised handler, per test module."""
import pytest

from handler.digit_handler import DigitHandler
from model import preprocessing
from tests.support.handler_context import make_context, unpacked_model_dir


@pytest.fixture(scope="module")
def model_dir(artifacts, tmp_path_factory):
    return unpacked_model_dir(artifacts, tmp_path_factory.mktemp("model_dir"))


@pytest.fixture(scope="module")
def handler(model_dir):
    handler = DigitHandler()
    handler.initialize(make_context(model_dir, 1))
    return handler


ODD_SHAPE = (29, 29)  # the shape of the image that breaks `broken_geometry`


@pytest.fixture
def broken_geometry(monkeypatch):
    """The batched geometry with a bug: it raises for any batch holding a 29x29 image, works for the rest."""
    real = preprocessing.to_mnist_geometry_batch

    def flaky(greys, *args, **kwargs):
        if any(grey.shape == ODD_SHAPE for grey in greys):
            raise RuntimeError("a bug")
        return real(greys, *args, **kwargs)

    monkeypatch.setattr(preprocessing, "to_mnist_geometry_batch", flaky)
