"""TorchServe's gRPC inference API: a channel sized to the server's limits, health, unary and streaming predictions,
and one answer per file with every failure turned into that file's error.

TorchServe's gRPC path drops per-request status codes: a bad image is answered with status OK and the handler's
JSON error body ({"code": 400, "type": "InputError", "message": ...}); `classify_file` reports it like an
INVALID_ARGUMENT status.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import empty_pb2

from serving.rpc.stubs import inference_pb2, inference_pb2_grpc

DEFAULT_MESSAGE_LIMIT = 6553500  # TorchServe's default max_request_size / max_response_size (bytes)
INPUT_NAME = "data"  # the input map key the handler reads, as the REST body's name
# gRPC codes that mean "this call was refused", not "this server is unusable".
TOKEN_CODES = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
UNREACHABLE_CODES = (grpc.StatusCode.UNAVAILABLE,)


@dataclass
class Answer:
    """One file's outcome: the parsed answer(s), or the error that replaced them."""
    path: Path
    messages: list[dict]
    error: str | None = None
    code: grpc.StatusCode | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def message_limits(properties: dict[str, str]) -> tuple[int, int]:
    """(largest request, largest response) in bytes the server accepts / may send, from its config."""
    return (int(properties.get("max_request_size", DEFAULT_MESSAGE_LIMIT)),
            int(properties.get("max_response_size", DEFAULT_MESSAGE_LIMIT)))


def open_channel(target: str, max_request: int, max_response: int) -> grpc.Channel:
    """An insecure channel (TorchServe's gRPC listeners are plaintext on loopback) with raised size limits.

    gRPC's Python default refuses to receive more than 4 MB; TorchServe accepts up to max_request_size.
    """
    return grpc.insecure_channel(target, options=[
        ("grpc.max_send_message_length", max_request),
        ("grpc.max_receive_message_length", max_response),
    ])


def auth_metadata(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


EXPLAIN_FIELD = "explain"  # TorchServe's gRPC has no explain RPC: this input field (value "true") asks the handler why


def prediction_request(model: str, version: str | None, data: bytes,
                       explain: bool = False) -> inference_pb2.PredictionsRequest:
    fields = {INPUT_NAME: data, **({EXPLAIN_FIELD: b"true"} if explain else {})}
    return inference_pb2.PredictionsRequest(model_name=model, model_version=version or "", input=fields)


def parse_prediction(payload: bytes) -> dict:
    """The handler's JSON answer; a non-JSON payload (never sent by this handler) is kept as text."""
    try:
        answer = json.loads(payload)
    except ValueError:
        return {"code": 502, "type": "BadAnswer", "message": payload.decode("utf-8", "replace")[:200]}
    return answer if isinstance(answer, dict) else {"answer": answer}


def error_message(answer: dict) -> str | None:
    """The handler's error body ({"code": 4xx/5xx, "message": ...}) as one line, or None for a prediction."""
    if isinstance(answer.get("code"), int) and answer["code"] >= 400:
        return f"{answer['code']} {answer.get('type', 'Error')}: {answer.get('message', '')}"
    return None


def describe_rpc_error(error: grpc.RpcError, target: str) -> str:
    """One line for a failed call, naming what to do about the usual causes."""
    code, details = error.code(), (error.details() or "").splitlines()
    detail = details[0] if details else ""
    if code in UNREACHABLE_CODES:
        return f"TorchServe's gRPC endpoint {target} is not reachable: is it running? (scripts/serve.sh start) [{detail}]"
    if code in TOKEN_CODES:
        return f"the server refused the token ({code.name}): {detail}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return f"INVALID_ARGUMENT: {detail}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "DEADLINE_EXCEEDED: no answer within --timeout"
    return f"{code.name}: {detail}"


def ping(channel: grpc.Channel, token: str, timeout: float) -> str:
    """TorchServe's health ("Healthy" / "Unhealthy"); raises grpc.RpcError."""
    stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
    reply = stub.Ping(empty_pb2.Empty(), metadata=auth_metadata(token), timeout=timeout)
    try:
        return json.loads(reply.health).get("status", reply.health)
    except ValueError:
        return reply.health


def predict(channel: grpc.Channel, token: str, model: str, version: str | None, data: bytes, timeout: float,
            explain: bool = False) -> dict:
    """One unary Predictions call: the handler's answer (a prediction or its error body; with explain, the
    explanation: attributions and the image the model saw); raises grpc.RpcError."""
    stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
    reply = stub.Predictions(prediction_request(model, version, data, explain), metadata=auth_metadata(token),
                             timeout=timeout)
    return parse_prediction(reply.prediction)


def stream(channel: grpc.Channel, token: str, model: str, version: str | None, data: bytes, timeout: float):
    """One StreamPredictions call: yields each streamed answer as it arrives; raises grpc.RpcError.

    A classifier has one answer per image, so each stream carries one message; the handler marks it final.
    """
    stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
    for reply in stub.StreamPredictions(prediction_request(model, version, data), metadata=auth_metadata(token),
                                        timeout=timeout):
        yield parse_prediction(reply.prediction)


def classify_file(call, path: Path, max_request: int, target: str) -> Answer:
    """Send one file with `call(data) -> list of answers`; every failure becomes this file's error."""
    data = path.read_bytes()
    if len(data) > max_request:
        return Answer(path, [], f"{len(data)} bytes is over the server's max_request_size of {max_request} bytes",
                      grpc.StatusCode.RESOURCE_EXHAUSTED)
    try:
        messages = call(data)
    except grpc.RpcError as error:
        return Answer(path, [], describe_rpc_error(error, target), error.code())
    errors = [message for message in map(error_message, messages) if message]
    if not messages:
        return Answer(path, [], "the stream ended without an answer", grpc.StatusCode.UNKNOWN)
    return Answer(path, messages, errors[0] if errors else None, grpc.StatusCode.INVALID_ARGUMENT if errors else None)
