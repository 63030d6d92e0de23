"""What the server itself counts: TorchServe's metrics (the latency split of a lone request), pids and RSS."""
from __future__ import annotations

import sys
import time

from serving.processes import resident_memory as process_rss
from serving.rest import http_json


def scrape_counters(metrics: str) -> dict[str, float]:
    """TorchServe's metrics endpoint (Prometheus text, no token in 0.12.0): each metric's samples summed."""
    totals: dict[str, float] = {}
    try:
        status, text = http_json(f"{metrics}/metrics", None, timeout=10)
    except OSError as error:  # no split then, the load numbers stand
        status, text = None, error
    if status != 200 or not isinstance(text, str):
        print(f"benchmarks: no latency split, {metrics}/metrics unreadable: {status} {text}", file=sys.stderr)
        return totals
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("{", 1)[0].split(" ", 1)[0], line.rsplit(" ", 1)[1]
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


# Longer than a worker waits between sending its counts (handler.metrics_seconds, 1 s in the shipped model-config):
# two scrapes this far apart that agree have seen every batch.
SETTLE_SECONDS = 1.5


def settled_counters(metrics: str, timeout: float = 10.0) -> dict[str, float]:
    """scrape_counters once two scrapes SETTLE_SECONDS apart agree: requests still in flight when wrk stopped are
    answered after it, and the handler's counts reach the frontend through the worker's log lines, sent every
    handler.metrics_seconds."""
    deadline = time.monotonic() + timeout
    last = scrape_counters(metrics)
    while time.monotonic() < deadline:
        time.sleep(SETTLE_SECONDS)
        now = scrape_counters(metrics)
        if now == last:
            break
        last = now
    return last


def latency_split(before: dict, after: dict, run: dict) -> dict:
    """Where a request's time goes, in mean ms, from TorchServe's own counters over one wrk run: the client's wait;
    the frontend's (ts_inference_latency: request in to answer out), of which the queue (ts_queue_latency: waiting
    for a worker, the batch delay included) and the handler (digits_handler_milliseconds_total per batch);
    what is left of the frontend's is TorchServe's hop: frontend -> worker socket, the worker's Python protocol
    and request context, and back."""
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    requests = delta("ts_inference_requests_total")
    if requests <= 0:
        return {}
    frontend = delta("ts_inference_latency_microseconds") / requests / 1e3
    queue = delta("ts_queue_latency_microseconds") / requests / 1e3
    batches = delta("digits_batches_total")
    handler = delta("digits_handler_milliseconds_total") / batches if batches else float("nan")
    client = run["latency_us"]["mean"] / 1e3
    return {"client": client, "frontend": frontend, "queue": queue, "handler": handler,
            "torchserve_hop": frontend - queue - handler, "client_to_frontend": client - frontend,
            "requests_per_batch": requests / batches if batches else float("nan")}


def resident_memory(pids: dict[str, int]) -> dict[str, float]:
    """RSS in MiB per named process (NaN for one that is gone)."""
    return {name: (rss / 2**20 if (rss := process_rss(pid)) is not None else float("nan")) for name, pid in pids.items()}


def server_pids(management: str, token: str, model: str, frontend: int | None) -> dict[str, int]:
    status, body = http_json(f"{management}/models/{model}", token)
    if status != 200:
        raise RuntimeError(f"describe failed: {status} {body}")
    pids = {f"worker {worker['id']}": int(worker["pid"]) for worker in body[0]["workers"]}
    if frontend:
        pids["frontend"] = frontend
    return pids
