"""serving/readiness.py: waiting out a key file TorchServe has created but not yet filled."""
import pytest

from serving import readiness as serving
from serving.config import Endpoints


def test_wait_until_ready_retries_while_the_key_file_is_half_written(tmp_path):
    """TorchServe creates key_file.json and fills it a moment later: an empty file must mean 'not yet'."""
    key_file = tmp_path / "key_file.json"
    key_file.write_text("")
    endpoints = Endpoints("http://127.0.0.1:1", "http://127.0.0.1:1", "http://127.0.0.1:1", "127.0.0.1:1",
                          "127.0.0.1:1", key_file)
    with pytest.raises(TimeoutError, match="invalid JSON"):
        serving.wait_until_ready(endpoints, "digits", timeout=1.0)
