"""Operate the running TorchServe through its management API: REST by default, gRPC with --grpc.

    python scripts/manage.py list                         # models, their versions, the default
    python scripts/manage.py describe                     # workers (status, pid, memory), batching, queue
    python scripts/manage.py describe --all               # every version
    python scripts/manage.py scale --min 3 --max 3        # returns when describe shows the workers READY
    python scripts/manage.py set-default 2.0              # /predictions/digits now answers with 2.0
    python scripts/manage.py register digits_v2.mar       # needs the model API (off here: see README)
    python scripts/manage.py unregister --version 2.0     # idem

The management token is read from TorchServe's key_file.json; addresses from config.properties.
Exit status: 0 done, 1 refused by the server (the message says why), 2 server unreachable, 3 token refused.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
from scripts.grpc_stubs import management_pb2, management_pb2_grpc  # noqa: E402
from scripts.serving import (  # noqa: E402
    DEFAULT_CONFIG, DEFAULT_MODEL, KEY_FILE_NAME, TOKEN_ERROR_TYPE, Endpoints, http_json, read_token,
)

MODEL_API_HINT = (
    "the model-registration API is off (enable_model_api=false in config.properties): a .mar is code and "
    "registering one runs it. README 'Registering models' says how to turn it on safely."
)
PAGE_SIZE = 100  # models per list page


TOKEN_ERROR_TEXT = "Token Authorization failed"  # the same refusal over gRPC (PERMISSION_DENIED)


class ManagementError(Exception):
    """The server refused a call: `status` is the HTTP status (gRPC codes are mapped to their HTTP twins),
    `kind` TorchServe's error type or the gRPC code name."""

    def __init__(self, status: int, message: str, kind: str = ""):
        super().__init__(message)
        self.status, self.kind = status, kind


class Unreachable(Exception):
    pass


# gRPC status -> the HTTP status TorchServe's REST API answers for the same refusal.
GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 408, grpc.StatusCode.INTERNAL: 500,
}


def version_path(model: str, version: str | None) -> str:
    path = f"/models/{urllib.parse.quote(model, safe='')}"
    return f"{path}/{urllib.parse.quote(version, safe='')}" if version else path


class RestManagement:
    """TorchServe's REST management API (default 127.0.0.1:8081)."""

    def __init__(self, address: str, token: str, timeout: float):
        self.address, self.token, self.timeout = address.rstrip("/"), token, timeout

    def call(self, method: str, path: str, query: dict | None = None, timeout: float | None = None):
        url = self.address + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        try:
            status, body = http_json(url, self.token, timeout=timeout or self.timeout, method=method)
        except OSError as error:
            raise Unreachable(f"TorchServe's management API is not reachable at {self.address}: {error}") from None
        if status >= 400:
            kind, message = (body.get("type", ""), body.get("message", body)) if isinstance(body, dict) else ("", body)
            raise ManagementError(status, f"{status} {kind}: {message}", kind)
        return body

    def list_models(self) -> list[dict]:
        models, token = [], None
        while True:
            query = {"limit": PAGE_SIZE, **({"next_page_token": token} if token else {})}
            page = self.call("GET", "/models", query)
            models += page.get("models", [])
            token = page.get("nextPageToken")
            if not token:
                return models

    def describe(self, model: str, version: str | None = None) -> list[dict]:
        return self.call("GET", version_path(model, version))

    def scale(self, model: str, version: str | None, min_workers: int, max_workers: int, timeout: float) -> str:
        # Not synchronous=true: TorchServe 0.12.0 then blocks the Netty I/O thread that carries the call until
        # the new workers are up, and the inference connections served by that thread stall as long (seconds).
        query = {"min_worker": min_workers, "max_worker": max_workers, "synchronous": "false"}
        return self.call("PUT", version_path(model, version), query, timeout=timeout).get("status", "")

    def set_default(self, model: str, version: str) -> str:
        return self.call("PUT", version_path(model, version) + "/set-default").get("status", "")

    def register(self, url: str, initial_workers: int, timeout: float) -> str:
        query = {"url": url, "initial_workers": initial_workers, "synchronous": "true"}
        return self.call("POST", "/models", query, timeout=timeout).get("status", "")

    def unregister(self, model: str, version: str | None) -> str:
        return self.call("DELETE", version_path(model, version)).get("status", "")


class GrpcManagement:
    """TorchServe's gRPC management API (default 127.0.0.1:7071): the same calls, the same token."""

    def __init__(self, target: str, token: str, timeout: float):
        self.target, self.timeout = target, timeout
        self.metadata = [("authorization", f"Bearer {token}")]
        self.channel = grpc.insecure_channel(target)
        self.stub = management_pb2_grpc.ManagementAPIsServiceStub(self.channel)

    def call(self, method, request, timeout: float | None = None) -> str:
        try:
            return method(request, metadata=self.metadata, timeout=timeout or self.timeout).msg
        except grpc.RpcError as error:
            detail = (error.details() or "").splitlines()
            message = f"{error.code().name}: {detail[0] if detail else ''}"
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                raise Unreachable(f"TorchServe's gRPC management API is not reachable at {self.target}: {message}") from None
            kind = TOKEN_ERROR_TYPE if TOKEN_ERROR_TEXT in message else error.code().name
            raise ManagementError(GRPC_TO_HTTP.get(error.code(), 500), message, kind) from None

    def list_models(self) -> list[dict]:
        models, token = [], 0
        while True:
            page = json.loads(self.call(self.stub.ListModels,
                                        management_pb2.ListModelsRequest(limit=PAGE_SIZE, next_page_token=token)))
            models += page.get("models", [])
            token = int(page.get("nextPageToken") or 0)
            if not token:
                return models

    def describe(self, model: str, version: str | None = None) -> list[dict]:
        request = management_pb2.DescribeModelRequest(model_name=model, model_version=version or "")
        return json.loads(self.call(self.stub.DescribeModel, request))

    def scale(self, model: str, version: str | None, min_workers: int, max_workers: int, timeout: float) -> str:
        request = management_pb2.ScaleWorkerRequest(model_name=model, model_version=version or "",
                                                    min_worker=min_workers, max_worker=max_workers, synchronous=False)
        return self.call(self.stub.ScaleWorker, request, timeout=timeout)

    def set_default(self, model: str, version: str) -> str:
        return self.call(self.stub.SetDefault, management_pb2.SetDefaultRequest(model_name=model, model_version=version))

    def register(self, url: str, initial_workers: int, timeout: float) -> str:
        request = management_pb2.RegisterModelRequest(url=url, initial_workers=initial_workers, synchronous=True)
        return self.call(self.stub.RegisterModel, request, timeout=timeout)

    def unregister(self, model: str, version: str | None) -> str:
        request = management_pb2.UnregisterModelRequest(model_name=model, model_version=version or "")
        return self.call(self.stub.UnregisterModel, request)


def resident_memory(pid: int | None) -> int | None:
    """A worker's RSS in bytes, measured here (the server is local: every listener is on loopback).

    TorchServe's own memoryUsage comes from its metrics collector, which reports 0 until its first round.
    """
    try:
        return psutil.Process(pid).memory_info().rss if pid else None
    except (psutil.Error, ValueError):
        return None


def worker_counts(entries: list[dict]) -> dict[str, tuple[int, int]]:
    """{version: (READY workers, all workers)}."""
    return {
        entry["modelVersion"]: (sum(worker.get("status") == "READY" for worker in entry.get("workers", [])),
                                len(entry.get("workers", [])))
        for entry in entries
    }


def format_description(entry: dict, default_version: str | None) -> str:
    default = " (default)" if entry.get("modelVersion") == default_version else ""
    queue = entry.get("jobQueueStatus", {})
    lines = [
        f"{entry['modelName']} {entry['modelVersion']}{default}  {entry.get('modelUrl', '')}",
        f"  workers   min {entry.get('minWorkers')}  max {entry.get('maxWorkers')}  device {entry.get('deviceType', '?')}",
        f"  batching  batchSize {entry.get('batchSize')}  maxBatchDelay {entry.get('maxBatchDelay')} ms"
        f"  responseTimeout {entry.get('responseTimeout')} s",
        f"  queue     pending {queue.get('pendingRequests', '?')}  free {queue.get('remainingCapacity', '?')}",
        f"  {'id':<6} {'status':<10} {'pid':>8} {'rss MB':>8}  gpu",
    ]
    for worker in entry.get("workers", []):
        rss = resident_memory(worker.get("pid")) or worker.get("memoryUsage") or 0
        gpu = worker.get("gpuUsage") if worker.get("gpu") else "-"
        lines.append(f"  {worker.get('id', ''):<6} {worker.get('status', ''):<10} {worker.get('pid', ''):>8} "
                     f"{rss / 2**20:>8.0f}  {gpu}")
    return "\n".join(lines)


def default_version(api, model: str) -> str | None:
    entries = api.describe(model)
    return entries[0].get("modelVersion") if entries else None


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
        print("\n\n".join(format_description(entry, default) for entry in entries))
        return 0
    if args.command == "scale":
        if not 0 <= args.min <= args.max:
            raise ManagementError(400, f"need 0 <= --min <= --max, got --min {args.min} --max {args.max}")
        deadline = time.monotonic() + args.timeout
        try:
            print(api.scale(args.model, args.version, args.min, args.max, args.timeout))
        except ManagementError as error:
            # Scaling down under load, TorchServe 0.12.0's gRPC ScaleWorker has answered UNKNOWN with no message
            # after doing the scaling. A server-side failure is judged by the workers describe shows, below.
            if error.status < 500 or error.kind == TOKEN_ERROR_TYPE:
                raise
            print(f"manage.py: the server answered {error}; checking the workers", file=sys.stderr)
        # The scale call only starts the change (see RestManagement.scale): describe shows when it is done.
        while True:
            counts = worker_counts(api.describe(args.model, args.version))
            settled = all(ready >= args.min and total <= args.max for ready, total in counts.values())
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.2)
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
    token = read_token(endpoints.key_file, "management")
    if args.grpc:
        api = GrpcManagement(endpoints.grpc_management, token, args.timeout)
    else:
        api = RestManagement(endpoints.management, token, args.timeout)
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
