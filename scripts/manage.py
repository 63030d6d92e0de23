"""Operate the running TorchServe through its management API: REST by default, gRPC with --grpc.

    python -m scripts.manage list                         # models, their versions, the default
    python -m scripts.manage describe                     # workers (status, pid, memory), batching, queue
    python -m scripts.manage describe --all               # every version
    python -m scripts.manage scale --min 3 --max 3        # returns when describe shows the workers READY
    python -m scripts.manage set-default 2.0              # /predictions/digits now answers with 2.0
    python -m scripts.manage register digits_v2.mar       # needs the model API (off here: docs/serving.md)
    python -m scripts.manage unregister --version 2.0     # idem

The management token is read from TorchServe's key_file.json; addresses from config.properties.
Exit status: 0 done, 1 refused by the server (the message says why), 2 server unreachable, 3 token refused.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from serving.config import DEFAULT_CONFIG, DEFAULT_MODEL, KEY_FILE_NAME, Endpoints
from serving.management import ManagementError, Unreachable, api_for, default_version, describe_text, scale_workers
from serving.tokens import TOKEN_ERROR_TYPE

MODEL_API_HINT = (
    "the model-registration API is off (enable_model_api=false in config.properties): a .mar is code and "
    "registering one runs it. docs/serving.md 'Registering models' says how to turn it on safely."
)


def run(api, args) -> int:
    """One command against `api`; prints its result. Raises ManagementError / Unreachable."""
    if args.command == "list":
        models = api.list_models()
        if args.json:
            print(json.dumps({model["modelName"]: api.describe(model["modelName"], "all") for model in models}, indent=2))
            return 0
        for model in models:
            name = model["modelName"]
            default = default_version(api, name)
            versions = [entry["modelVersion"] for entry in api.describe(name, "all")]
            marked = ", ".join(f"{version} (default)" if version == default else version for version in versions)
            print(f"{name}: {marked}")
        return 0
    if args.command == "describe":
        entries = api.describe(args.model, "all" if args.all else args.version)
        if args.json:
            print(json.dumps(entries, indent=2))
            return 0
        default = default_version(api, args.model)
        print("\n\n".join(describe_text(entry, default) for entry in entries))
        return 0
    if args.command == "scale":
        if not 0 <= args.min <= args.max:
            raise ManagementError(400, f"need 0 <= --min <= --max, got --min {args.min} --max {args.max}")
        # scale_workers sends the call again when the server fails it (a TorchServe race scaling down under load)
        # and returns once describe shows the change done: the call itself only starts it.
        settled, counts, errors = scale_workers(api, args.model, args.version, args.min, args.max, args.timeout)
        for error in errors:
            print(f"manage.py: the server answered {error}; sent the scale call again", file=sys.stderr)
        for version, (ready, total) in counts.items():
            print(f"{args.model} {version}: {ready} of {total} workers READY")
        if not settled:
            raise ManagementError(504, f"workers not settled at --min {args.min} --max {args.max} "
                                       f"within {args.timeout:g} s")
        return 0
    if args.command == "set-default":
        print(api.set_default(args.model, args.version))
        return 0
    if args.command == "register":
        print(api.register(args.url, args.initial_workers, args.timeout))
        return 0
    if args.command == "unregister":
        print(api.unregister(args.model, args.version))
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Operate the running TorchServe through its management API.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TorchServe config.properties")
    parser.add_argument("--key-file", type=Path, default=None, help=f"token file (default: {KEY_FILE_NAME} in the repo root)")
    parser.add_argument("--grpc", action="store_true", help="use the gRPC management API instead of REST")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call (scale/register: the wait)")
    parser.add_argument("--json", action="store_true", help="print the server's JSON")
    commands = parser.add_subparsers(dest="command", required=True)
    formatter = argparse.ArgumentDefaultsHelpFormatter

    def add(name: str, text: str, model: bool = True) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=text, formatter_class=formatter)
        if model:
            command.add_argument("--model", default=DEFAULT_MODEL, help="model name")
        return command

    add("list", "registered models, their versions and the default", model=False)
    describe = add("describe", "workers (status, pid, memory), batch settings and queue of a model")
    describe.add_argument("--version", default=None, help="a version (default: the default version)")
    describe.add_argument("--all", action="store_true", help="every version")
    scale = add("scale", "set the worker count; waits (up to --timeout) until describe shows them READY")
    scale.add_argument("--min", type=int, required=True, help="min workers")
    scale.add_argument("--max", type=int, required=True, help="max workers")
    scale.add_argument("--version", default=None, help="a version (default: the default version)")
    set_default = add("set-default", "make VERSION the one /predictions/<model> answers with")
    set_default.add_argument("version", help="e.g. 2.0")
    register = add("register", "load a .mar from the model store (needs enable_model_api=true)", model=False)
    register.add_argument("url", help="archive file name in the model store, e.g. digits_v2.mar")
    register.add_argument("--initial-workers", type=int, default=1,
                          help="workers to start, unless the archive's model-config.yaml sets minWorkers")
    unregister = add("unregister", "unload a model version (needs enable_model_api=true)")
    unregister.add_argument("--version", default=None, help="a version (default: the default version)")
    args = parser.parse_args(argv)

    endpoints = Endpoints.from_config(args.config, args.key_file)
    api = api_for(endpoints, args.grpc, args.timeout)
    try:
        return run(api, args)
    except Unreachable as error:
        print(f"manage.py: {error}; is it running? (scripts/serve.sh start)", file=sys.stderr)
        return 2
    except ManagementError as error:
        if error.kind == TOKEN_ERROR_TYPE:
            print(f"manage.py: the server refused the management token from {endpoints.key_file}: {error}",
                  file=sys.stderr)
            return 3
        hint = f"\n  {MODEL_API_HINT}" if args.command in ("register", "unregister") and error.status in (403, 405) else ""
        print(f"manage.py: {error}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
