"""Load from wrk (Debian's package) against a server: the load settings, the soak, overload and kill -9 recovery."""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from benchmarks.counters import latency_split, settled_counters
from benchmarks.profile import profile_worker

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_post.lua"
IMAGES_PER_REQUEST = 64  # frames in one multi-image request
RAW_BATCH = 64  # batch size of the raw in-process ceiling
MEMORY_REQUESTS = 100_000  # the full run sends at least this many requests before the final RSS reading
# (seconds per setting) full / quick
DURATIONS = {"full": {"warmup": 5, "single": 15, "multi": 10, "raw": 5, "overload": 30},
             "quick": {"warmup": 1, "single": 2, "multi": 2, "raw": 1, "overload": 3}}
OVERLOAD_CONCURRENCY = 256  # far more connections than the queue (job_queue_size) holds
CONCURRENCY = (1, 16, 64)
MULTI_CONCURRENCY = 4
SOAK_REQUESTS = {"full": 500_000, "quick": 2_000}
# The soak's memory reading "after warm-up" comes after this many of its requests: the frontend's JVM grows its heap
# over the first ~50,000 requests after a start (G1's sizing), then stays (docs/performance.md, "Long runs and
# failures").
SOAK_SETTLE = {"full": 50_000, "quick": 500}
SOAK_CONCURRENCY = 32
KILLS = {"full": 5, "quick": 1}
RECOVERY_CONCURRENCY = 8
# wrk's run around each kill: 2 s before it, the rest while the worker is replaced (quick: a smoke run of the step)
RECOVERY_LOAD_SECONDS = {"full": 20, "quick": 8}
# A lone request now and then, as the page sends one per stroke: requests this far apart, this many (full / quick)
SPORADIC_GAP_S = 0.05
SPORADIC_REQUESTS = {"full": 200, "quick": 20}


def run_wrk(url: str, body: Path | list[tuple[Path, int]], token: str, content_type: str, concurrency: int,
            seconds: float) -> dict:
    """One wrk run; its JSON summary plus requests/s and error total. `body` is one file, or (file, label) pairs
    sent in turn with every answer checked: wrong_answers counts those that are not a 200 whose top-1 label is the
    one of the body sent on that connection (one connection per wrk thread, see wrk_post.lua)."""
    checked = isinstance(body, list)
    bodies = [f"{path}={label}" for path, label in body] if checked else [str(body)]
    threads = concurrency if checked else 1
    command = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
               "-s", str(WRK_SCRIPT), url, "--", token, content_type, *bodies]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    summary = json.loads(output.strip().splitlines()[-1])
    summary["requests_per_s"] = summary["requests"] / (summary["duration_us"] / 1e6)
    summary["error_count"] = sum(summary["errors"].values())
    return summary


def load_settings(url: str, work: Path, token: str, durations: dict, pids: dict | None, args,
                  who: str = "", metrics: str | None = None) -> tuple[list, list]:
    """Single-image PNG requests at each concurrency (py-spy on one worker at 64 with --profile), then .npy.
    With `metrics` (TorchServe's metrics URL), the concurrency-1 run also gets its latency split."""
    runs, profile = [], []
    for concurrency in CONCURRENCY:
        print(f"{who}PNG, concurrency {concurrency}, {durations['single']} s ...", flush=True)
        # Settled first: requests of the run before (up to its concurrency) may still be answered after wrk stopped,
        # and would count as this run's (once they made the frontend's mean exceed the client's).
        before = settled_counters(metrics) if metrics and concurrency == 1 else None
        if args.profile and pids and concurrency == 64:
            from concurrent.futures import ThreadPoolExecutor

            worker = next(pid for name, pid in pids.items() if name.startswith("worker"))
            with ThreadPoolExecutor(1) as pool:
                sampling = pool.submit(profile_worker, worker, durations["single"] - 2, work / "profile.txt")
                run = run_wrk(url, work / "digit.png", token, "image/png", concurrency, durations["single"])
                profile = sampling.result()
            shutil.copy(work / "profile.txt", args.output_dir / "profile.txt")
        else:
            run = run_wrk(url, work / "digit.png", token, "image/png", concurrency, durations["single"])
        if before is not None:
            run["split_ms"] = latency_split(before, settled_counters(metrics), run)
        runs.append({"name": f"PNG, 1 image, c={concurrency}", "concurrency": concurrency,
                     "images_per_request": 1, "images_per_s": run["requests_per_s"], **run})
    print(f"{who}.npy of {IMAGES_PER_REQUEST}, concurrency {MULTI_CONCURRENCY}, {durations['multi']} s ...", flush=True)
    before = settled_counters(metrics) if metrics else None  # the c=64 run's last handler counts included
    run = run_wrk(url, work / "digits.npy", token, "application/octet-stream", MULTI_CONCURRENCY, durations["multi"])
    if before is not None:  # what the server itself counted: requests (the frontend) and images (the handler)
        after = settled_counters(metrics)
        run["counted_by_server"] = {name: after.get(name, 0.0) - before.get(name, 0.0)
                                    for name in ("ts_inference_requests_total", "digits_images_total")}
    runs.append({"name": f".npy, {IMAGES_PER_REQUEST} images, c={MULTI_CONCURRENCY}",
                 "concurrency": MULTI_CONCURRENCY, "images_per_request": IMAGES_PER_REQUEST,
                 "images_per_s": run["requests_per_s"] * IMAGES_PER_REQUEST, **run})
    return runs, profile


PEER = "the peer"  # the name of the peer's results among sporadic()'s targets


def sporadic(targets: dict[str, tuple[str, str]], body: bytes, requests: int, gap: float = SPORADIC_GAP_S) -> dict:
    """A lone request now and then: `requests` single requests to each of `targets` (name -> (url, token)), one
    every `gap` seconds, the targets in turn (their order rotating each round), each on its own keep-alive
    connection (http.client, the standard library's plainest client). Unlike wrk's concurrency 1, which sends
    back to back, each server was idle before each request; taking turns, the targets share the machine's drift,
    so their ratios are paired. Each answer must be a 200. Per target: percentiles in microseconds, as wrk's."""
    import http.client
    from urllib.parse import urlsplit

    addresses = {name: urlsplit(url) for name, (url, _) in targets.items()}
    connections = {name: http.client.HTTPConnection(address.hostname, address.port, timeout=30)
                   for name, address in addresses.items()}
    took: dict[str, list[float]] = {name: [] for name in targets}
    names = list(targets)
    try:
        for turn in range(requests):
            for name in names[turn % len(names):] + names[:turn % len(names)]:
                time.sleep(gap)
                headers = {"Authorization": f"Bearer {targets[name][1]}", "Content-Type": "image/png"}
                start = time.perf_counter()
                connections[name].request("POST", addresses[name].path, body=body, headers=headers)
                answer = connections[name].getresponse()
                answer.read()
                took[name].append(time.perf_counter() - start)
                if answer.status != 200:
                    raise RuntimeError(f"{name} answered {answer.status} to a lone request")
    finally:
        for connection in connections.values():
            connection.close()
    results = {}
    for name, times in took.items():
        cuts = statistics.quantiles(times, n=100, method="inclusive")
        results[name] = {"requests": requests, "gap_s": gap, "latency_us": {
            "p50": statistics.median(times) * 1e6, "p90": cuts[89] * 1e6, "p99": cuts[98] * 1e6}}
    return results


def soak(url: str, bodies: list[tuple[Path, int]], token: str, requests: int, rate: float | None,
         settle: int = 0, settled=None) -> dict:
    """At least `requests` requests at concurrency 32, several digits in turn, every answer checked against the digit
    sent on its connection. wrk runs for a duration, not a count:
    a run is sized from `rate` (requests/s) with 10% to spare, and a short one follows if it fell short. Without a
    rate (no concurrency-64 run before it), a 3 s run measures one first. With `settled`, it is called once the
    first `settle` requests are answered (the memory reading after warm-up) and its value returned as "settled"."""
    runs, reading = [], None
    while (done := sum(run["requests"] for run in runs)) < requests:
        goal = settle if settled is not None and reading is None and settle < requests else requests
        seconds = 3 if rate is None else (goal - done) / max(rate, 50.0) * 1.1 + 1
        print(f"soak: {done} requests so far, {seconds:.0f} s more at concurrency {SOAK_CONCURRENCY} ...", flush=True)
        runs.append(run_wrk(url, bodies, token, "image/png", SOAK_CONCURRENCY, seconds))
        rate = runs[-1]["requests_per_s"]
        if not runs[-1]["requests"]:  # nothing answered: the server is gone; report what was reached
            break
        if settled is not None and reading is None and done + runs[-1]["requests"] >= min(settle, requests):
            reading = settled()
    seconds = sum(run["duration_us"] for run in runs) / 1e6
    return {"requests": done, "concurrency": SOAK_CONCURRENCY, "wrk_runs": len(runs), "seconds": seconds,
            "requests_per_s": done / seconds, "errors": sum(run["error_count"] for run in runs),
            "wrong_answers": sum(run["wrong_answers"] for run in runs),
            "checked_answers": sum(run["checked_answers"] for run in runs), "digits": len(bodies),
            "p99_us": max(run["latency_us"]["p99"] for run in runs),
            "max_latency_us": max(run["latency_us"]["max"] for run in runs), "settled": reading}


def overload(url: str, body: Path, token: str, seconds: float, workers) -> dict:
    """Concurrency 256 for `seconds`: more requests than TorchServe queues (job_queue_size). Each must be answered,
    200 or 503 (queue full), none may wait out wrk's 10 s timeout, and no worker may be restarted (`workers()`
    returns the worker pids before and after)."""
    print(f"overload: concurrency {OVERLOAD_CONCURRENCY}, {seconds:.0f} s ...", flush=True)
    before = workers()
    run = run_wrk(url, body, token, "image/png", OVERLOAD_CONCURRENCY, seconds)
    after = workers()
    errors = run["errors"]
    return {"concurrency": OVERLOAD_CONCURRENCY, "seconds": run["duration_us"] / 1e6, "requests": run["requests"],
            "requests_per_s": run["requests_per_s"], "answered_200": run["requests"] - errors["status"],
            "answered_503": run["status_503"], "other_status": errors["status"] - run["status_503"],
            "socket_errors": errors["connect"] + errors["read"] + errors["write"], "timeouts": errors["timeout"],
            "p50_us": run["latency_us"]["p50"], "p99_us": run["latency_us"]["p99"],
            "max_latency_us": run["latency_us"]["max"],
            "worker_restarts": len(set(before.values()) - set(after.values()))}


def recovery(server, model: str, url: str, body: Path, token: str, kills: int, load_seconds: float) -> dict:
    """kill -9 a worker under wrk load, `kills` times: seconds until TorchServe has replaced it, requests lost."""
    from concurrent.futures import ThreadPoolExecutor

    seconds, failed, slowest = [], {}, 0
    for kill in range(kills):
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(run_wrk, url, body, token, "image/png", RECOVERY_CONCURRENCY, load_seconds)
            time.sleep(2)
            _, took = server.kill_a_worker(model, timeout=60)
            print(f"recovery {kill + 1}/{kills}: worker replaced "
                  + (f"{took:.1f} s after kill -9" if took is not None else "not within 60 s"), flush=True)
            run = load.result()
        if took is None:
            raise RuntimeError("TorchServe did not replace a killed worker within 60 s")
        seconds.append(took)
        for kind, count in run["errors"].items():  # wrk: connect/read/write errors, status >= 400, timeouts
            failed[kind] = failed.get(kind, 0) + count
        slowest = max(slowest, run["latency_us"]["max"])
    return {"kills": kills, "seconds": seconds, "median_s": statistics.median(seconds), "max_s": max(seconds),
            "failed_requests": sum(failed.values()), "failures_by_kind": failed, "concurrency": RECOVERY_CONCURRENCY,
            "max_latency_us": slowest}
