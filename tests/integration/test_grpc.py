"""gRPC against a real TorchServe: token metadata, predictions equal to REST, errors, streaming, the CLI."""
from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
import requests

from serving.rpc import client as grpc_client
from serving.rpc.stubs import inference_pb2_grpc, management_pb2, management_pb2_grpc
from tests.support import ROOT
from tests.support.images import png_bytes
from tests.support import bad_inputs
from tests.support.grpc_calls import refusals
from tests.support.servers import settled_logs

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
TOLERANCE = 2e-6  # probabilities are rounded to 6 decimals; a batched forward pass may differ in the last digit
@pytest.fixture(scope="module")
def channel(server):
    max_request, max_response = grpc_client.message_limits({})
    with grpc_client.open_channel(server.endpoints.grpc_inference, max_request, max_response) as channel:
        yield channel


def rest_predict(server, data: bytes, model: str = "digits") -> requests.Response:
    return requests.post(f"{server.endpoints.inference}/predictions/{model}", data=data,
                         headers={**server.auth(), "Content-Type": "application/octet-stream"}, timeout=TIMEOUT)


def assert_same_answer(grpc_answer: dict, rest_answer: dict) -> None:
    assert grpc_answer["label"] == rest_answer["label"] and grpc_answer["index"] == rest_answer["index"]
    assert [entry["label"] for entry in grpc_answer["topk"]] == [entry["label"] for entry in rest_answer["topk"]]
    for ours, theirs in zip(grpc_answer["topk"], rest_answer["topk"]):
        assert ours["probability"] == pytest.approx(theirs["probability"], abs=TOLERANCE)


def run_cli(server, *args: str) -> subprocess.CompletedProcess:
    """python -m scripts.grpc_client as a user runs it; the server's TS_* ports reach it through the environment."""
    command = [sys.executable, "-m", "scripts.grpc_client", "--key-file", str(server.endpoints.key_file), *args]
    return subprocess.run(command, env=server.env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ping_with_the_token(server, channel):
    assert grpc_client.ping(channel, server.inference_token, TIMEOUT) == "Healthy"


@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["missing", "wrong"])
def test_calls_without_the_right_token_are_refused(server, channel, test_split, token):
    for refused in refusals(channel, token, png_bytes(test_split[0][0]), TIMEOUT):
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "Token Authorization failed" in refused.details()


def test_inference_token_does_not_open_the_grpc_management_api(server):
    with grpc.insecure_channel(server.endpoints.grpc_management) as channel:
        stub = management_pb2_grpc.ManagementAPIsServiceStub(channel)
        request = management_pb2.DescribeModelRequest(model_name="digits")
        with pytest.raises(grpc.RpcError) as refused:
            stub.DescribeModel(request, metadata=grpc_client.auth_metadata(server.inference_token), timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        answer = stub.DescribeModel(request, metadata=grpc_client.auth_metadata(server.management_token), timeout=TIMEOUT)
        assert '"modelName": "digits"' in answer.msg


def test_grpc_predictions_equal_rest_predictions(server, channel, test_split):
    images, labels = test_split
    correct = 0
    for image, label in zip(images[:40], labels[:40]):
        data = png_bytes(image)
        ours = grpc_client.predict(channel, server.inference_token, "digits", None, data, TIMEOUT)
        rest = rest_predict(server, data)
        assert rest.status_code == 200
        assert_same_answer(ours, rest.json())
        correct += ours["label"] == str(label)
    assert correct >= 38, f"{correct} of 40 right over gRPC"


@pytest.mark.parametrize("name", list(bad_inputs.REFUSED))
def test_bad_input_gets_an_error_body_and_the_worker_survives(server, channel, test_split, name):
    """The REST matrix over gRPC. TorchServe's gRPC path drops per-request status codes: the error is the same
    JSON body as REST's 400, with status OK (docs/grpc-and-oip.md "gRPC"); scripts/grpc_client.py turns it into a failure."""
    data = bad_inputs.refused_bodies(test_split[0][0])[name]
    pids = sorted(server.worker_pids("digits"))
    answer = grpc_client.predict(channel, server.inference_token, "digits", None, data, TIMEOUT)
    assert answer["code"] == 400 and answer["type"] == "InputError", answer
    assert bad_inputs.REFUSED[name] in answer["message"]
    assert answer == rest_predict(server, data).json()
    assert grpc_client.error_message(answer).startswith("400 InputError: ")
    good = png_bytes(test_split[0][7])
    after = grpc_client.predict(channel, server.inference_token, "digits", None, good, TIMEOUT)
    assert after["label"] == str(test_split[1][7])
    assert sorted(server.worker_pids("digits")) == pids


def test_odd_but_valid_images_get_the_rest_answers(server, channel, test_split):
    for data in bad_inputs.accepted_bodies(test_split[0][3]).values():
        answer = grpc_client.predict(channel, server.inference_token, "digits", None, data, TIMEOUT)
        assert_same_answer(answer, rest_predict(server, data).json())


def test_unknown_rpc_is_unimplemented(server, channel):
    """gRPC's "wrong method": an RPC the service does not define."""
    missing = channel.unary_unary("/org.pytorch.serve.grpc.inference.InferenceAPIsService/Classify")
    with pytest.raises(grpc.RpcError) as refused:
        missing(b"", metadata=grpc_client.auth_metadata(server.inference_token), timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_stream_predictions2_is_refused_and_the_worker_survives(server, channel, test_split):
    """StreamPredictions2 is for stateful (sequence-batched) models; this model is not one. TorchServe refuses it:
    without a sequence id each message gets an error status; with one the call fails (the frontend logs an
    IllegalStateException). Either way no worker restarts and the next prediction is right."""
    pids = sorted(server.worker_pids("digits"))
    stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
    metadata = grpc_client.auth_metadata(server.inference_token)
    request = grpc_client.prediction_request("digits", None, png_bytes(test_split[0][7]))
    answers = list(stub.StreamPredictions2(iter([request, request]), metadata=metadata, timeout=TIMEOUT))
    assert len(answers) == 2
    assert all(answer.status.code != 0 and "sequenceId is required" in answer.status.message for answer in answers)
    request.sequence_id = "seq-1"
    with pytest.raises(grpc.RpcError):
        list(stub.StreamPredictions2(iter([request]), metadata=metadata, timeout=TIMEOUT))
    after = grpc_client.predict(channel, server.inference_token, "digits", None, png_bytes(test_split[0][7]), TIMEOUT)
    assert after["label"] == str(test_split[1][7])
    assert sorted(server.worker_pids("digits")) == pids


def test_stream_predictions_answers_once_and_keeps_the_worker(server, channel, test_split):
    """Without the handler's ts_stream_next header, TorchServe 0.12.0 restarts the worker on StreamPredictions."""
    pids = sorted(server.worker_pids("digits"))
    for image in test_split[0][:5]:
        data = png_bytes(image)
        messages = list(grpc_client.stream(channel, server.inference_token, "digits", None, data, TIMEOUT))
        assert len(messages) == 1
        assert_same_answer(messages[0], grpc_client.predict(channel, server.inference_token, "digits", None, data, TIMEOUT))
    messages = list(grpc_client.stream(channel, server.inference_token, "digits", None, b"seven", TIMEOUT))
    assert len(messages) == 1 and messages[0]["code"] == 400
    assert sorted(server.worker_pids("digits")) == pids
    assert "Backend worker thread exception" not in settled_logs(server)["ts_log.log"]


def test_a_version_is_chosen_by_the_request_field(server, channel, test_split):
    """digits_v2.mar is in the store but this server loads version 1.0 only: 2.0 is refused, 1.0 answers."""
    data = png_bytes(test_split[0][0])
    chosen = grpc_client.predict(channel, server.inference_token, "digits", "1.0", data, TIMEOUT)
    assert_same_answer(chosen, rest_predict(server, data, "digits/1.0").json())
    with pytest.raises(grpc.RpcError) as missing:
        grpc_client.predict(channel, server.inference_token, "digits", "2.0", data, TIMEOUT)
    assert missing.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL)
    assert "2.0" in missing.value.details()


def test_unknown_model_is_named_in_the_error(server, channel, test_split):
    with pytest.raises(grpc.RpcError) as missing:
        grpc_client.predict(channel, server.inference_token, "no-such-model", None, png_bytes(test_split[0][0]), TIMEOUT)
    assert "Model not found: no-such-model" in missing.value.details()


def test_a_message_over_max_request_size_is_refused_and_the_server_stays_healthy(server, channel):
    limit, _ = grpc_client.message_limits({})
    with grpc_client.open_channel(server.endpoints.grpc_inference, 2 * limit, limit) as unlimited:
        with pytest.raises(grpc.RpcError) as refused:
            grpc_client.predict(unlimited, server.inference_token, "digits", None, b"\0" * (limit + 1), TIMEOUT)
    # TorchServe's gRPC server resets the stream (RST_STREAM CANCEL): the client sees CANCELLED (docs/grpc-and-oip.md "gRPC").
    assert refused.value.code() == grpc.StatusCode.CANCELLED and "RST_STREAM" in refused.value.details(), refused.value
    assert grpc_client.ping(channel, server.inference_token, TIMEOUT) == "Healthy"


def test_cli_ping_predict_and_stream(server, test_split, tmp_path):
    files = []
    for index in range(4):
        path = tmp_path / f"digit{index}.png"
        path.write_bytes(png_bytes(test_split[0][index]))
        files.append(str(path))
    ping = run_cli(server, "ping")
    assert ping.returncode == 0 and ping.stdout.strip() == "Healthy", ping.stderr
    for command in ("predict", "stream"):
        result = run_cli(server, command, *files)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert [line.split()[1] for line in lines] == [str(label) for label in test_split[1][:4]]


def test_cli_exit_codes_name_the_problem(server, test_split, tmp_path):
    good, bad, big = tmp_path / "good.png", tmp_path / "bad.png", tmp_path / "big.png"
    good.write_bytes(png_bytes(test_split[0][0]))
    bad.write_bytes(b"not an image")
    big.write_bytes(b"\0" * (grpc_client.message_limits({})[0] + 1))
    refused = run_cli(server, "predict", str(good), str(bad), str(big))
    assert refused.returncode == 1
    assert "400 InputError: not an image" in refused.stdout
    assert "over the server's max_request_size" in refused.stdout

    wrong_token = tmp_path / "key_file.json"
    wrong_token.write_text('{"inference": {"key": "wrong"}, "management": {"key": "wrong"}}')
    result = run_cli(server, "--key-file", str(wrong_token), "predict", str(good))
    assert result.returncode == 3 and "refused" in result.stderr

    unreachable = run_cli(server, "--target", "127.0.0.1:1", "ping")
    assert unreachable.returncode == 2 and "not reachable" in unreachable.stderr
