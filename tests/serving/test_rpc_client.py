"""serving/rpc/client.py without a server: message limits, answers told from error bodies, local refusals."""
import json

import pytest

from serving import config
from serving.rpc import client as grpc_client


def test_message_limits_come_from_the_config():
    assert grpc_client.message_limits({"max_request_size": "10", "max_response_size": "20"}) == (10, 20)
    assert grpc_client.message_limits({}) == (grpc_client.DEFAULT_MESSAGE_LIMIT,) * 2
    shipped = config.load_properties(config.DEFAULT_CONFIG)
    assert grpc_client.message_limits(shipped) == (int(shipped["max_request_size"]), int(shipped["max_response_size"]))


def test_error_bodies_are_told_from_predictions():
    error = {"code": 400, "type": "InputError", "message": "not an image"}
    assert grpc_client.error_message(error) == "400 InputError: not an image"
    assert grpc_client.error_message({"label": "7", "index": 7, "probability": 0.9, "topk": []}) is None
    assert grpc_client.parse_prediction(json.dumps(error).encode()) == error
    assert grpc_client.parse_prediction(b"\xff not json")["code"] == 502


def test_classify_file_refuses_an_oversized_file_locally(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(b"\0" * 11)
    answer = grpc_client.classify_file(lambda data: pytest.fail("must not be sent"), path, 10, "host:1")
    assert not answer.ok and "over the server's max_request_size of 10 bytes" in answer.error
