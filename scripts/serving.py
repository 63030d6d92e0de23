"""Where a running TorchServe listens and how to authenticate to it, read from config.properties.

Shared by the clients, scripts/serve.sh and the tests, so ports, model name and token path are never
retyped. TorchServe's own rule is followed: with enable_envvars_config=true, a TS_<KEY> environment
variable overrides <key> in config.properties.

    python scripts/serving.py wait --timeout 120   # block until every version of the model has minWorkers READY
    python scripts/serving.py endpoints            # print the endpoints and the token file
    python scripts/serving.py load-models          # load_models, less the archives not in the store
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "config.properties"
DEFAULT_MODEL = "digits"
TOKEN_ERROR_TYPE = "InvalidKeyException"  # TorchServe's error type for a missing or wrong token (REST: HTTP 400)
KEY_FILE_NAME = "key_file.json"  # TorchServe writes it into the directory it was started from


def load_properties(path: Path) -> dict[str, str]:
    """Java-style key=value file (comments with #), as TorchServe reads it."""
    properties = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            properties[key.strip()] = value.strip()
    return properties


def effective_properties(path: Path = DEFAULT_CONFIG, environ: dict | None = None) -> dict[str, str]:
    """config.properties with TS_* environment overrides applied, as TorchServe applies them."""
    environ = os.environ if environ is None else environ
    properties = load_properties(path)
    if properties.get("enable_envvars_config", "false").lower() == "true":
        for name, value in environ.items():
            if name.startswith("TS_") and name not in ("TS_CONFIG_FILE",):
                properties[name[3:].lower()] = value
    return properties


@dataclass(frozen=True)
class Endpoints:
    inference: str
    management: str
    metrics: str
    grpc_inference: str
    grpc_management: str
    key_file: Path

    @classmethod
    def from_config(cls, path: Path = DEFAULT_CONFIG, key_file: Path | None = None, environ=None) -> "Endpoints":
        props = effective_properties(path, environ)
        grpc_host = props.get("grpc_inference_address", "127.0.0.1")
        return cls(
            inference=props.get("inference_address", "http://127.0.0.1:8080").rstrip("/"),
            management=props.get("management_address", "http://127.0.0.1:8081").rstrip("/"),
            metrics=props.get("metrics_address", "http://127.0.0.1:8082").rstrip("/"),
            grpc_inference=f"{grpc_host}:{props.get('grpc_inference_port', '7070')}",
            grpc_management=f"{props.get('grpc_management_address', grpc_host)}:{props.get('grpc_management_port', '7071')}",
            key_file=Path(key_file) if key_file else ROOT / KEY_FILE_NAME,
        )


class TokenFileError(SystemExit):
    """key_file.json is missing, half-written or lacks the key: a CLI exits with the message."""


def read_token(key_file: Path, kind: str = "inference") -> str:
    """The inference, management or API key from TorchServe's key_file.json."""
    try:
        keys = json.loads(Path(key_file).read_text())
    except FileNotFoundError:
        raise TokenFileError(
            f"token file {key_file} not found: is TorchServe running (scripts/serve.sh start)? "
            "It writes the file into the directory it was started from."
        ) from None
    except ValueError as error:
        raise TokenFileError(f"token file {key_file} is not TorchServe's key file (invalid JSON: {error})") from None
    try:
        return keys[kind]["key"]
    except (KeyError, TypeError):
        raise TokenFileError(f"token file {key_file} has no {kind!r} key") from None


def http_json(url: str, token: str | None, timeout: float = 5.0, method: str = "GET", data: bytes | None = None):
    """(status, parsed JSON or text) for one HTTP call; raises OSError when nothing listens."""
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("utf-8", "replace")


def ready_workers(endpoints: Endpoints, model: str) -> dict[str, tuple[int, int]]:
    """{version: (READY workers, minWorkers)} for every loaded version of the model, per the management API."""
    token = read_token(endpoints.key_file, "management")
    status, body = http_json(f"{endpoints.management}/models/{model}/all", token)
    if status != 200 or not isinstance(body, list):
        return {}
    return {
        entry.get("modelVersion"): (
            sum(worker.get("status") == "READY" for worker in entry.get("workers", [])),
            int(entry.get("minWorkers", 1)),
        )
        for entry in body
    }


def wait_until_ready(endpoints: Endpoints, model: str, timeout: float, is_alive=lambda: True) -> None:
    """Block until every loaded version of the model has all its minWorkers READY; TimeoutError (or RuntimeError
    if the server died) otherwise.

    All of them, not the first: TorchServe starts a model's workers side by side and answers /ping and
    predictions as soon as one is READY, while the others are still loading ("UNLOADING" in describe). Whatever
    runs next (a benchmark, a check of every worker's log line) must find the server as configured.
    """
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if not is_alive():
            raise RuntimeError("TorchServe exited during start-up")
        try:
            if endpoints.key_file.exists():
                ready = ready_workers(endpoints, model)
                if ready and all(count >= max(minimum, 1) for count, minimum in ready.values()):
                    return
                last_error = "READY/minWorkers per version: " + ", ".join(
                    f"{version} {count}/{minimum}" for version, (count, minimum) in ready.items())
        except (OSError, KeyError, ValueError, TokenFileError) as error:  # the key file may be half-written
            last_error = str(error)
        time.sleep(0.5)
    raise TimeoutError(f"model {model!r} not ready after {timeout:.0f}s ({last_error})")


def archives_to_load(properties: dict[str, str], store: Path) -> tuple[list[str], list[str]]:
    """(present, missing): config's load_models split by whether the archive is in the model store.

    TorchServe logs a stack trace for each missing archive and goes on; serve.sh passes only the present ones.
    """
    names = [name.strip() for name in properties.get("load_models", "").split(",") if name.strip()]
    if names in (["all"], ["ALL"]):
        return names, []
    present = [name for name in names if (store / name).is_file()]
    return present, [name for name in names if name not in present]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("wait", "endpoints", "load-models"))
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TorchServe config.properties")
    parser.add_argument("--key-file", type=Path, default=None, help=f"default: {KEY_FILE_NAME} in the repo root")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for minWorkers READY workers")
    parser.add_argument("--pid", type=int, default=None, help="give up early if this process exits")
    args = parser.parse_args(argv)
    if args.command == "load-models":
        properties = effective_properties(args.config)
        store = Path(properties.get("model_store", "model_store"))
        present, missing = archives_to_load(properties, store if store.is_absolute() else ROOT / store)
        for name in missing:
            print(f"serving.py: {name} is not in the model store; starting without it", file=sys.stderr)
        print(",".join(present))
        return 0 if present else 1
    endpoints = Endpoints.from_config(args.config, args.key_file)
    if args.command == "endpoints":
        print(f"REST inference   {endpoints.inference}/predictions/{args.model}")
        print(f"REST management  {endpoints.management}/models/{args.model}")
        print(f"metrics          {endpoints.metrics}/metrics")
        print(f"gRPC inference   {endpoints.grpc_inference}   gRPC management {endpoints.grpc_management}")
        print(f"tokens           {endpoints.key_file} (inference / management / API keys)")
        return 0

    def alive() -> bool:
        if args.pid is None:
            return True
        try:
            os.kill(args.pid, 0)
            return True
        except OSError:
            return False

    try:
        wait_until_ready(endpoints, args.model, args.timeout, alive)
    except (TimeoutError, RuntimeError) as error:
        print(f"serving.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
