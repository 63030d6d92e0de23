"""The handler's fixtures: an unpacked model directory and an initialised handler, per test module."""
import pytest

from handler.digit_handler import DigitHandler
from tests.support.handler_context import make_context, unpacked_model_dir


@pytest.fixture(scope="module")
def model_dir(artifacts, tmp_path_factory):
    return unpacked_model_dir(artifacts, tmp_path_factory.mktemp("model_dir"))


@pytest.fixture(scope="module")
def handler(model_dir):
    handler = DigitHandler()
    handler.initialize(make_context(model_dir, 1))
    return handler
