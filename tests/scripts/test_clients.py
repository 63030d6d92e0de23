"""The clients' pure parts, without a server: config, tokens, answers, errors, formatting."""
import json

import grpc
import pytest

from scripts import grpc_client, manage, serving


def test_archives_to_load_skips_the_missing_ones(tmp_path):
    (tmp_path / "digits.mar").write_bytes(b"")
    present, missing = serving.archives_to_load({"load_models": "digits.mar, digits_v2.mar"}, tmp_path)
    assert present == ["digits.mar"] and missing == ["digits_v2.mar"]
    assert serving.archives_to_load({"load_models": "all"}, tmp_path) == (["all"], [])
    assert serving.archives_to_load({}, tmp_path) == ([], [])


def test_config_lists_version_one_first():
    """The first archive loaded is the default version: 1.0 must come first."""
    present, _ = serving.archives_to_load(serving.load_properties(serving.DEFAULT_CONFIG), serving.ROOT / "nowhere")
    names = serving.load_properties(serving.DEFAULT_CONFIG)["load_models"].split(",")
    assert names == ["digits.mar", "digits_v2.mar"] and present == []


@pytest.mark.parametrize("content, message", [
    ("not json", "invalid JSON"), ('{"inference": {"key": "k"}}', "has no 'management' key"), ("[]", "has no"),
])
def test_read_token_names_a_bad_key_file(tmp_path, content, message):
    path = tmp_path / "key_file.json"
    path.write_text(content)
    with pytest.raises(SystemExit, match=message):
        serving.read_token(path, "management")
    with pytest.raises(SystemExit, match="not found"):
        serving.read_token(tmp_path / "missing.json")


def test_message_limits_come_from_the_config():
    assert grpc_client.message_limits({"max_request_size": "10", "max_response_size": "20"}) == (10, 20)
    assert grpc_client.message_limits({}) == (grpc_client.DEFAULT_MESSAGE_LIMIT,) * 2
    shipped = serving.load_properties(serving.DEFAULT_CONFIG)
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


def test_exit_status_prefers_unreachable_then_token(tmp_path, capsys):
    path = tmp_path / "x.png"
    ok = grpc_client.Answer(path, [{"label": "1"}])
    bad = grpc_client.Answer(path, [{"code": 400}], "400 InputError: x", grpc.StatusCode.INVALID_ARGUMENT)
    token = grpc_client.Answer(path, [], "refused", grpc.StatusCode.PERMISSION_DENIED)
    down = grpc_client.Answer(path, [], "down", grpc.StatusCode.UNAVAILABLE)
    assert grpc_client.exit_status([ok], "t", path) == 0
    assert grpc_client.exit_status([ok, bad], "t", path) == 1
    assert grpc_client.exit_status([bad, token], "t", path) == 3
    assert grpc_client.exit_status([token, down], "t", path) == 2
    assert "down" in capsys.readouterr().err


DESCRIBE = {
    "modelName": "digits", "modelVersion": "2.0", "modelUrl": "digits_v2.mar", "minWorkers": 3, "maxWorkers": 3,
    "batchSize": 16, "maxBatchDelay": 5, "responseTimeout": 30, "deviceType": "gpu",
    "jobQueueStatus": {"remainingCapacity": 99, "pendingRequests": 1},
    "workers": [
        {"id": "9000", "status": "READY", "pid": 0, "memoryUsage": 3 * 2**20, "gpu": True, "gpuUsage": "gpuId::0 memory 5MiB"},
        {"id": "9001", "status": "UNLOADING", "pid": 0, "memoryUsage": 0, "gpu": False, "gpuUsage": "N/A"},
    ],
}


def test_describe_is_formatted_with_workers_batching_and_queue():
    text = manage.format_description(DESCRIBE, "2.0")
    assert text.splitlines()[0] == "digits 2.0 (default)  digits_v2.mar"
    assert "min 3  max 3  device gpu" in text and "batchSize 16  maxBatchDelay 5 ms" in text
    assert "pending 1  free 99" in text and "gpuId::0 memory 5MiB" in text
    assert "(default)" not in manage.format_description(DESCRIBE, "1.0")
    assert manage.worker_counts([DESCRIBE]) == {"2.0": (1, 2)}


def test_version_paths_are_quoted():
    assert manage.version_path("digits", None) == "/models/digits"
    assert manage.version_path("digits", "2.0") == "/models/digits/2.0"
    assert manage.version_path("a/b", "1 0") == "/models/a%2Fb/1%200"


def test_scale_refuses_min_over_max_before_calling():
    class NoServer:
        def __getattr__(self, name):
            pytest.fail(f"{name} must not be called")

    args = manage.argparse.Namespace(command="scale", min=3, max=1, model="digits", version=None, timeout=5, json=False)
    with pytest.raises(manage.ManagementError, match="--min 3 --max 1"):
        manage.run(NoServer(), args)


def test_wait_until_ready_retries_while_the_key_file_is_half_written(tmp_path):
    """TorchServe creates key_file.json and fills it a moment later: an empty file must mean 'not yet'."""
    key_file = tmp_path / "key_file.json"
    key_file.write_text("")
    endpoints = serving.Endpoints("http://127.0.0.1:1", "http://127.0.0.1:1", "http://127.0.0.1:1", "127.0.0.1:1",
                                  "127.0.0.1:1", key_file)
    with pytest.raises(TimeoutError, match="invalid JSON"):
        serving.wait_until_ready(endpoints, "digits", timeout=1.0)


def test_profile_frames_are_counted_per_function():
    from scripts.benchmark import function_of

    assert function_of("decode_image (/work/main/model/preprocessing.py:84)") == "decode_image (preprocessing.py)"
    assert function_of("decode_image (preprocessing.py:87)") == "decode_image (preprocessing.py)"
    assert function_of("<module> (ts/model_service_worker.py:301)") == "<module> (model_service_worker.py)"
