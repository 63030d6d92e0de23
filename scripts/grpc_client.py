"""gRPC client for the running TorchServe: health, predictions and TorchServe's streaming RPC.

    python scripts/grpc_client.py ping
    python scripts/grpc_client.py predict artifacts/samples/*.png     # unary Predictions, several in flight
    python scripts/grpc_client.py stream artifacts/samples/*.png      # StreamPredictions, one stream per file
    python scripts/grpc_client.py predict --version 2.0 --json digit.png

The inference token goes as `authorization: Bearer <key>` metadata, read from TorchServe's key_file.json; the
address and the message-size limits come from config.properties (max_request_size / max_response_size), so a
large image is sent whole and one over the server's limit is refused here with the limit named.

Errors: TorchServe's gRPC path drops per-request status codes, so a bad image is answered with gRPC status OK and
the handler's JSON error body ({"code": 400, "type": "InputError", "message": ...}); this client reports it like
an INVALID_ARGUMENT status, as a failed file. Exit status: 0 all answered, 1 some file refused,
2 server unreachable, 3 token refused.
"""
from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import empty_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
from scripts.grpc_stubs import inference_pb2, inference_pb2_grpc  # noqa: E402
from scripts.serving import DEFAULT_CONFIG, DEFAULT_MODEL, KEY_FILE_NAME, Endpoints, effective_properties, read_token  # noqa: E402

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


def print_answers(answers: list[Answer], as_json: bool) -> None:
    width = max(len(str(answer.path)) for answer in answers)
    for answer in answers:
        if as_json:
            print(json.dumps({"file": str(answer.path), "ok": answer.ok, "error": answer.error,
                              "answers": answer.messages}))
        elif not answer.ok:
            print(f"{str(answer.path):<{width}}  error {answer.error}")
        else:
            for message in answer.messages:
                print(f"{str(answer.path):<{width}}  {message['label']:>6}  {message['probability']:.4f}")


def exit_status(answers: list[Answer], target: str, key_file: Path) -> int:
    for answer in answers:
        if answer.code in UNREACHABLE_CODES:
            print(f"grpc_client.py: {answer.error}", file=sys.stderr)
            return 2
    for answer in answers:
        if answer.code in TOKEN_CODES:
            print(f"grpc_client.py: token from {key_file} refused: {answer.error}", file=sys.stderr)
            return 3
    return 0 if all(answer.ok for answer in answers) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Call the running TorchServe over gRPC.", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TorchServe config.properties")
    parser.add_argument("--key-file", type=Path, default=None, help=f"TorchServe's key file (default: {KEY_FILE_NAME} in the repo root)")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="a file holding the bearer token itself, e.g. the gateway's client credential "
                        "(instead of TorchServe's inference key from --key-file)")
    parser.add_argument("--target", default=None, help="gRPC inference host:port (default: from --config)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("ping", help="TorchServe's health over gRPC",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for name, text in (("predict", "unary Predictions, one call per file"),
                       ("stream", "StreamPredictions, one stream per file")):
        command = commands.add_parser(name, help=text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        command.add_argument("files", nargs="+", type=Path, help="image files (PNG, JPEG, BMP, GIF, WEBP)")
        command.add_argument("--model", default=DEFAULT_MODEL, help="model name")
        command.add_argument("--version", default=None, help="model version (default: the default version)")
        command.add_argument("--concurrency", type=int, default=8, help="calls in flight at once")
        command.add_argument("--json", action="store_true", help="print the full JSON answer per file")
        if name == "predict":
            command.add_argument("--explain", action="store_true",
                                 help="ask why: per-pixel attributions (integrated gradients) and the 28x28 image the "
                                 "model saw, in the JSON answer (use with --json)")
    args = parser.parse_args(argv)

    endpoints = Endpoints.from_config(args.config, args.key_file)
    target = args.target or endpoints.grpc_inference
    max_request, max_response = message_limits(effective_properties(args.config))
    token = args.token_file.read_text().strip() if args.token_file else read_token(endpoints.key_file, "inference")
    with open_channel(target, max_request, max_response) as channel:
        if args.command == "ping":
            try:
                health = ping(channel, token, args.timeout)
            except grpc.RpcError as error:
                answer = Answer(Path(target), [], describe_rpc_error(error, target), error.code())
                return exit_status([answer], target, endpoints.key_file) or 1
            print(health)
            return 0 if health == "Healthy" else 1

        missing = [str(path) for path in args.files if not path.is_file()]
        if missing:
            print(f"grpc_client.py: no such file: {', '.join(missing)}", file=sys.stderr)
            return 1
        if args.command == "predict":
            def call(data: bytes) -> list[dict]:
                return [predict(channel, token, args.model, args.version, data, args.timeout, args.explain)]
        else:
            def call(data: bytes) -> list[dict]:
                return list(stream(channel, token, args.model, args.version, data, args.timeout))
        with ThreadPoolExecutor(max_workers=max(args.concurrency, 1)) as pool:
            answers = list(pool.map(lambda path: classify_file(call, path, max_request, target), args.files))
    print_answers(answers, args.json)
    return exit_status(answers, target, endpoints.key_file)


if __name__ == "__main__":
    sys.exit(main())
