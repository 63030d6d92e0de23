"""gRPC client for the running TorchServe: health, predictions and TorchServe's streaming RPC.

    python -m scripts.grpc_client ping
    python -m scripts.grpc_client predict artifacts/samples/*.png     # unary Predictions, several in flight
    python -m scripts.grpc_client stream artifacts/samples/*.png      # StreamPredictions, one stream per file
    python -m scripts.grpc_client predict --version 2.0 --json digit.png

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
from pathlib import Path

import grpc

from serving.cli import add_client_arguments, client_token
from serving.config import DEFAULT_MODEL, Endpoints, effective_properties
from serving.rpc.client import (TOKEN_CODES, UNREACHABLE_CODES, Answer, classify_file, describe_rpc_error,
                                message_limits, open_channel, ping, predict, stream)


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
    add_client_arguments(parser)
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
    token = client_token(args, endpoints)
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
