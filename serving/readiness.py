"""Is a TorchServe ready: every worker of every loaded version of a model READY, per the management API."""
from __future__ import annotations

import time

from serving.config import Endpoints
from serving.rest import http_json
from serving.tokens import TokenFileError, read_token

POLL_SECONDS = 0.1  # describe is cheap; the gateway turns ready within this of the last worker (docs/container.md)


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
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"model {model!r} not ready after {timeout:.0f}s ({last_error})")
