"""Start, stop or inspect the bundle's TorchServe (run by scripts/serve.sh, which finds the venv's Python).

    scripts/serve.sh start    # start with config.properties on model_store/, wait until every worker is READY
    scripts/serve.sh status   # running? which endpoints, which token file
    scripts/serve.sh stop     # stop TorchServe and its workers

TorchServe runs from the repository root: its token file (key_file.json) and logs/ land there; its pid file and
worker sockets in $TMPDIR (default /tmp). Environment: START_TIMEOUT (seconds, default 120); any TS_<KEY>
overrides config.properties. Exit status: 0 done, 1 failed, 2 usage, 3 (status) not running.
"""
from __future__ import annotations

import argparse
import os
import sys

from serving import launch
from serving.config import DEFAULT_CONFIG, DEFAULT_MODEL, ROOT, archives_to_load, effective_properties, model_store

USAGE = "usage: scripts/serve.sh start|stop|status"


def print_endpoints(server: launch.Server) -> None:
    endpoints, model = server.endpoints, DEFAULT_MODEL
    print(f"REST inference   {endpoints.inference}/predictions/{model}")
    print(f"REST management  {endpoints.management}/models/{model}")
    print(f"metrics          {endpoints.metrics}/metrics")
    print(f"gRPC inference   {endpoints.grpc_inference}   gRPC management {endpoints.grpc_management}")
    print(f"tokens           {endpoints.key_file} (inference / management / API keys)")


def start(timeout: float) -> int:
    store = model_store(effective_properties(DEFAULT_CONFIG))
    if not (launch.BIN / "torchserve").exists():
        print("serve.sh: torchserve not found; run 'make venv' first", file=sys.stderr)
        return 1
    if not (store / "digits.mar").is_file():
        print(f"serve.sh: {store / 'digits.mar'} not found; run 'make package' (or scripts/package.sh) first",
              file=sys.stderr)
        return 1
    running = launch.attach(ROOT)
    if running:
        print(f"serve.sh: TorchServe is already running (pid {running.frontend_pid()}); 'scripts/serve.sh stop' first",
              file=sys.stderr)
        return 1
    # config.properties loads digits.mar and, when `make package-v2` has built it, digits_v2.mar (version 2.0):
    # TorchServe logs a stack trace for an archive it cannot find, so only the present ones are passed.
    models = os.environ.get("TS_LOAD_MODELS")
    if not models:
        present, missing = archives_to_load(effective_properties(DEFAULT_CONFIG), store)
        for name in missing:
            print(f"serve.sh: {name} is not in the model store; starting without it", file=sys.stderr)
        models = ",".join(present)
    server = launch.spawn(store, ROOT, models, ports=launch.FROM_CONFIG, tmpdir=launch.tempdir(),
                          console=ROOT / "logs" / "console.log", logs=ROOT / "logs", keep_logs=True,
                          keep_ts_env=True, new_session=True)  # it outlives this command
    try:
        server.wait_until_ready(timeout)  # stops it when it does not get there
    except RuntimeError as error:
        print(f"serve.sh: {error}", file=sys.stderr)
        return 1
    print(f"TorchServe is running (pid {server.frontend_pid()}) with model digits ready.")
    print_endpoints(server)
    print(f"try: {launch.BIN / 'python'} -m scripts.predict artifacts/samples/*.png")
    return 0


def stop() -> int:
    server = launch.attach(ROOT, logs=ROOT / "logs")
    if server is None:
        print("TorchServe is not running.")
        return 0
    frontend = server.frontend_pid()
    server.stop(timeout=30)
    if server.killed:
        print(f"serve.sh: still running after 30 s: sent SIGKILL to {server.killed}", file=sys.stderr)
    server.endpoints.key_file.unlink(missing_ok=True)
    print(f"TorchServe stopped (pid {frontend}).")
    return 0


def status() -> int:
    server = launch.attach(ROOT)
    if server is None:
        print("TorchServe is not running.")
        return 3
    print(f"TorchServe is running (pid {server.frontend_pid()}).")
    print_endpoints(server)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(usage=USAGE[len("usage: "):], description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?")
    args = parser.parse_args(argv)
    if args.command == "start":
        return start(float(os.environ.get("START_TIMEOUT", "120")))
    if args.command == "stop":
        return stop()
    if args.command == "status":
        return status()
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
