"""Benchmark the bundle: TorchServe under load from wrk, against the raw in-process ceiling of the same model.

    python scripts/benchmark.py                     # full run (a few minutes): the README's performance table
    python scripts/benchmark.py --quick             # under a minute: proves the benchmark works
    python scripts/benchmark.py --only soak         # only the soak: >= 50,000 checked requests at concurrency 32
    python scripts/benchmark.py --only recovery     # only the kill -9 recovery measurement
    python scripts/benchmark.py --url http://127.0.0.1:8080 --key-file key_file.json   # a running server

It starts its own TorchServe (free ports, own temp dir, token auth on, scripts/local_server.py) from
model_store/digits.mar unless --url is given, and measures with wrk (Debian's package; `make bench` installs it),
one thread, keep-alive connections, on this same machine:

  * single-image PNG requests at concurrency 1, 16 and 64: requests/s, p50/p90/p99 latency, errors;
  * multi-image requests (a .npy of 64 frames per request): images/s;
  * the raw in-process ceiling: the worker's model (same TorchScript optimisation, same torch threads), batched
    forward at batch 64, in as many processes as TorchServe has workers; and the per-image preprocessing cost;
  * a soak: at least 50,000 single-image requests at concurrency 32 (quick: 2,000), every answer checked (200 and
    the right digit); errors, wrong answers and the RSS of every process before and after it;
  * worker and frontend RSS after warm-up and at the end (the full run sends >= 100,000 requests first);
  * recovery: kill -9 one worker under load (wrk at concurrency 8), 5 times (quick: once): seconds until TorchServe
    has replaced it (describe shows every worker READY again), and the requests that failed meanwhile. Only with
    the benchmark's own server: it never kills the workers of a server given with --url;
  * overload: concurrency 256 for 30 s (quick: 3 s), more than TorchServe queues: how many answers were 200 and how
    many 503 (queue full), anything else (other status, socket errors, timeouts), p99, and worker restarts;
  * where a lone request's time goes (concurrency 1), from TorchServe's own counters: queue, handler, and the rest
    of the frontend's time (TorchServe's frontend -> worker hop);
  * the peer (unless --no-peer): a plain FastAPI + uvicorn server over the same .mar's model and the same
    preprocessing (scripts/peer_server.py: 2 worker processes, batch 1, one torch thread each, a bearer-token check),
    measured right after TorchServe's load settings with the same wrk settings; the table puts the ratio
    TorchServe / peer beside every figure. TorchServe stays up, idle, while the peer runs.

With --profile it also samples one worker with py-spy during the concurrency-64 run and reports where its time
goes (the share of samples inside each function): the "what limits it" of the README comes from there.

It prints a table and writes results.json and latency.png into --output-dir (default artifacts/bench/).
Timing numbers from a 2-core machine are noisy: compare medians of several runs, not single numbers.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
from scripts.manage import resident_memory as process_rss  # noqa: E402
from scripts.serving import DEFAULT_MODEL, ROOT, http_json, read_token  # noqa: E402

WRK_SCRIPT = ROOT / "scripts" / "wrk_post.lua"
IMAGES_PER_REQUEST = 64  # frames in one multi-image request
RAW_BATCH = 64  # batch size of the raw in-process ceiling
MEMORY_REQUESTS = 100_000  # the full run sends at least this many requests before the final RSS reading
# (seconds per setting) full / quick
DURATIONS = {"full": {"warmup": 5, "single": 15, "multi": 10, "raw": 5, "overload": 30},
             "quick": {"warmup": 1, "single": 2, "multi": 2, "raw": 1, "overload": 3}}
OVERLOAD_CONCURRENCY = 256  # far more connections than the queue (job_queue_size) holds
CONCURRENCY = (1, 16, 64)
MULTI_CONCURRENCY = 4
SOAK_REQUESTS = {"full": 50_000, "quick": 2_000}
SOAK_CONCURRENCY = 32
KILLS = {"full": 5, "quick": 1}
RECOVERY_CONCURRENCY = 8
# wrk's run around each kill: 2 s before it, the rest while the worker is replaced (quick: a smoke run of the step)
RECOVERY_LOAD_SECONDS = {"full": 20, "quick": 8}


# ---------------------------------------------------------------- inputs


def sample_inputs(count: int) -> tuple[bytes, bytes, list[int], list[tuple[bytes, int]]]:
    """(one 28x28 PNG of a real MNIST digit, a .npy of `count` real digits, their labels, and one PNG of each digit
    0-9 with its label), from the default training run's held-out test split: digits the model never trained on."""
    from PIL import Image

    import train

    defaults = train.build_parser().parse_args([])
    images, labels = train.builtin_splits(defaults.dataset, (defaults.val_fraction, defaults.test_fraction),
                                          defaults.seed)["test"]
    def png_of(pixels: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return buffer.getvalue()

    npy = io.BytesIO()
    np.save(npy, images[:count], allow_pickle=False)
    per_digit = [(png_of(images[index]), int(labels[index])) for digit in range(10)
                 for index in np.flatnonzero(labels == digit)[:5]]  # five candidates per digit
    return png_of(images[0]), npy.getvalue(), [int(label) for label in labels[:count]], per_digit


def answered_right(url: str, token: str, candidates: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
    """One PNG per digit that the server classifies as its true label (the soak then checks every answer against
    it: a wrong one is a mix-up or a fault under load, not the model's error on a hard digit)."""
    import requests

    chosen = {}
    for data, label in candidates:
        if label not in chosen:
            answer = requests.post(url, data=data, timeout=30,
                                   headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"})
            if answer.status_code == 200 and answer.json()["label"] == str(label):
                chosen[label] = (data, label)
    return sorted(chosen.values(), key=lambda pair: pair[1])


# ---------------------------------------------------------------- the raw ceiling


def _raw_worker(weights: str, threads: int, seconds: float, batch: int, queue) -> None:
    import torch

    from handler.digit_handler import load_model, optimize_for_cpu, predict

    torch.set_num_threads(threads)
    model = optimize_for_cpu(load_model(weights, torch.device("cpu"))[0])
    inputs = torch.randn(batch, 1, 28, 28)
    predict(model, inputs)
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        predict(model, inputs)
        count += batch
    queue.put(count / seconds)


def raw_throughput(weights: Path, processes: int, threads: int, seconds: float, batch: int = RAW_BATCH) -> float:
    """Images/s of the batched forward pass, `processes` at once (as TorchServe's workers run), summed."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_raw_worker, args=(str(weights), threads, seconds, batch, queue))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    rates = [queue.get(timeout=seconds + 120) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(rates)


def preprocessing_cost(png: bytes, npy: bytes, resolution: int, repeat: int) -> dict:
    """Median microseconds per image for the handler's input path (parse_request, then preprocess): PNG bytes alone
    (a lone request), 16 PNG requests preprocessed together (a full TorchServe batch), and .npy frames."""
    import torch

    from handler.digit_handler import parse_request, preprocess

    torch.set_num_threads(1)
    timings: dict[str, list[float]] = {"png_us": [], "png_batch16_us": [], "npy_frame_us": []}
    frames = len(parse_request({"body": npy}, 3, 10).images)
    for _ in range(repeat):
        start = time.perf_counter()
        preprocess([parse_request({"body": png}, 3, 10)], resolution)
        timings["png_us"].append(time.perf_counter() - start)
        start = time.perf_counter()
        preprocess([parse_request({"body": png}, 3, 10) for _ in range(16)], resolution)
        timings["png_batch16_us"].append((time.perf_counter() - start) / 16)
        start = time.perf_counter()
        preprocess([parse_request({"body": npy}, 3, 10)], resolution)
        timings["npy_frame_us"].append((time.perf_counter() - start) / frames)
    return {name: statistics.median(values) * 1e6 for name, values in timings.items()}


# ---------------------------------------------------------------- load


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


def soak(url: str, bodies: list[tuple[Path, int]], token: str, requests: int, rate: float | None) -> dict:
    """At least `requests` requests at concurrency 32, several digits in turn, every answer checked against the digit
    sent on its connection. wrk runs for a duration, not a count:
    a run is sized from `rate` (requests/s) with 10% to spare, and a short one follows if it fell short. Without a
    rate (no concurrency-64 run before it), a 3 s run measures one first."""
    runs = []
    while (done := sum(run["requests"] for run in runs)) < requests:
        seconds = 3 if rate is None else (requests - done) / max(rate, 50.0) * 1.1 + 1
        print(f"soak: {done} requests so far, {seconds:.0f} s more at concurrency {SOAK_CONCURRENCY} ...", flush=True)
        runs.append(run_wrk(url, bodies, token, "image/png", SOAK_CONCURRENCY, seconds))
        rate = runs[-1]["requests_per_s"]
        if not runs[-1]["requests"]:  # nothing answered: the server is gone; report what was reached
            break
    seconds = sum(run["duration_us"] for run in runs) / 1e6
    return {"requests": done, "concurrency": SOAK_CONCURRENCY, "wrk_runs": len(runs), "seconds": seconds,
            "requests_per_s": done / seconds, "errors": sum(run["error_count"] for run in runs),
            "wrong_answers": sum(run["wrong_answers"] for run in runs),
            "checked_answers": sum(run["checked_answers"] for run in runs), "digits": len(bodies),
            "p99_us": max(run["latency_us"]["p99"] for run in runs),
            "max_latency_us": max(run["latency_us"]["max"] for run in runs)}


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


def function_of(frame: str) -> str:
    """py-spy's raw frame 'name (path/file.py:line)' -> 'name (file.py)': lines of one function counted once."""
    name, _, location = frame.partition(" (")
    return f"{name} ({location.rsplit('/', 1)[-1].split(':')[0]})"


def profile_worker(pid: int, seconds: float, raw_path: Path) -> list[dict]:
    """Sample a worker with py-spy (non-blocking) and return the functions holding the most samples, inclusive."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    subprocess.run([py_spy, "record", "--nonblocking", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                    "--rate", "200", "--format", "raw", "--output", str(raw_path)],
                   check=True, capture_output=True, timeout=seconds + 60)
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        functions = {function_of(frame) for frame in stack.split(";")}
        for function in functions:
            inclusive[function] = inclusive.get(function, 0) + int(count)
    ranked = sorted(inclusive.items(), key=lambda item: -item[1])
    return [{"function": name, "share": count / total} for name, count in ranked[:25]] if total else []


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


# ---------------------------------------------------------------- report


def print_table(results: dict) -> None:
    if results["runs"]:
        print(f"\n{'setting':<28} {'req/s':>8} {'images/s':>9} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'errors':>6}")
    for run in results["runs"]:
        latency = run["latency_us"]
        print(f"{run['name']:<28} {run['requests_per_s']:>8.0f} {run['images_per_s']:>9.0f} "
              f"{latency['p50'] / 1e3:>7.2f} {latency['p90'] / 1e3:>7.2f} {latency['p99'] / 1e3:>7.2f} "
              f"{run['error_count']:>6}")
    split = next((run["split_ms"] for run in results["runs"] if run.get("split_ms")), None)
    if split:
        print(f"\na lone request (concurrency 1), mean ms from TorchServe's counters: client {split['client']:.2f} = "
              f"to the frontend and back {split['client_to_frontend']:.2f} + frontend {split['frontend']:.2f} "
              f"(queue {split['queue']:.2f} + handler {split['handler']:.2f} + TorchServe's hop "
              f"{split['torchserve_hop']:.2f}); {split['requests_per_batch']:.2f} requests per batch")
    peer = results.get("peer")
    if peer:
        print(f"\nthe peer ({peer['server']}), and TorchServe / peer:")
        print(f"{'setting':<28} {'req/s':>8} {'images/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}"
              f" {'x req/s':>8} {'x p50':>6} {'x p99':>6}")
        for ours, theirs in zip(results["runs"], peer["runs"]):
            latency, mine = theirs["latency_us"], ours["latency_us"]
            print(f"{theirs['name']:<28} {theirs['requests_per_s']:>8.0f} {theirs['images_per_s']:>9.0f} "
                  f"{latency['p50'] / 1e3:>7.2f} {latency['p99'] / 1e3:>7.2f} {theirs['error_count']:>6} "
                  f"{ours['requests_per_s'] / theirs['requests_per_s']:>8.2f} "
                  f"{mine['p50'] / latency['p50']:>6.2f} {mine['p99'] / latency['p99']:>6.2f}")
    raw = results["raw"]
    if raw:
        print(f"\nraw in-process ceiling: {raw['images_per_s']:.0f} images/s (batch {raw['batch']}, "
              f"{raw['processes']} processes x {raw['threads']} thread)")
        print(f"preprocessing per image: PNG {raw['preprocessing']['png_us']:.0f} us alone, "
              f"{raw['preprocessing']['png_batch16_us']:.0f} us in a batch of 16, "
              f".npy frame {raw['preprocessing']['npy_frame_us']:.0f} us")
        multi = [run for run in results["runs"] if run["images_per_request"] > 1]
        if multi:
            print(f"multi-image requests: {multi[0]['images_per_s']:.0f} images/s = "
                  f"{multi[0]['images_per_s'] / raw['images_per_s']:.0%} of the raw ceiling")
    overloaded = results.get("overload")
    if overloaded:
        print(f"\noverload: concurrency {overloaded['concurrency']} for {overloaded['seconds']:.0f} s, "
              f"{overloaded['requests_per_s']:.0f} req/s: {overloaded['answered_200']} answered 200, "
              f"{overloaded['answered_503']} 503 (queue full), {overloaded['other_status']} other status, "
              f"{overloaded['socket_errors']} socket errors, {overloaded['timeouts']} timeouts; "
              f"p50 {overloaded['p50_us'] / 1e3:.1f} ms, p99 {overloaded['p99_us'] / 1e3:.0f} ms, "
              f"max {overloaded['max_latency_us'] / 1e3:.0f} ms; {overloaded['worker_restarts']} worker restarts")
    soaked = results["soak"]
    if soaked:
        print(f"\nsoak: {soaked['requests']} requests at concurrency {soaked['concurrency']} "
              f"in {soaked['seconds']:.0f} s "
              f"({soaked['requests_per_s']:.0f} req/s, p99 {soaked['p99_us'] / 1e3:.1f} ms, "
              f"max {soaked['max_latency_us'] / 1e3:.0f} ms): {soaked['errors']} errors, "
              f"{soaked['wrong_answers']} wrong answers")
        for name, before in soaked["rss_before_mib"].items():
            after = soaked["rss_after_mib"].get(name, float("nan"))
            print(f"  RSS {name:<14} {before:7.1f} -> {after:7.1f} MiB ({(after - before) / before:+.1%})")
    recovered = results["recovery"]
    if recovered:
        print(f"\nkill -9 of a worker under load (concurrency {recovered['concurrency']}), {recovered['kills']} times: "
              f"replaced after median {recovered['median_s']:.1f} s, max {recovered['max_s']:.1f} s; "
              f"{recovered['failed_requests']} requests failed "
              f"({', '.join(f'{kind} {count}' for kind, count in recovered['failures_by_kind'].items() if count)}); "
              f"slowest answer {recovered['max_latency_us'] / 1e3:.0f} ms")
    memory = results["memory"]
    print()
    for name, before in memory["after_warmup_mib"].items():
        after = memory["at_end_mib"].get(name, float("nan"))
        print(f"RSS {name:<14} {before:7.1f} MiB after warm-up, {after:7.1f} MiB after "
              f"{memory['requests']} requests ({(after - before) / before:+.1%})")
    if results["profile_worker_at_c64"]:
        print("\none worker at concurrency 64 (py-spy, share of samples inside each function):")
        for entry in results["profile_worker_at_c64"][:18]:
            print(f"  {entry['share']:6.1%}  {entry['function']}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    peer = results.get("peer")
    for who, all_runs, colour in (("TorchServe", results["runs"], "tab:blue"),
                                  ("FastAPI peer", peer["runs"] if peer else [], "tab:orange")):
        runs = [run for run in all_runs if run["images_per_request"] == 1]
        if not runs:
            continue
        for key, style in (("p50", "o-"), ("p99", "^:")):
            axis.plot([run["requests_per_s"] for run in runs], [run["latency_us"][key] / 1e3 for run in runs], style,
                      color=colour, label=f"{who} {key}")
        for run in runs:
            axis.annotate(f"c={run['concurrency']}", (run["requests_per_s"], run["latency_us"]["p99"] / 1e3),
                          textcoords="offset points", xytext=(4, 4), fontsize=8, color=colour)
    axis.set_xlabel("throughput (requests/s)")
    axis.set_ylabel("latency (ms)")
    axis.set_yscale("log")
    axis.set_title("single-image PNG requests, 2 workers each")
    axis.legend()
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run of every step, under a minute")
    parser.add_argument("--only", choices=("soak", "recovery", "overload"), default=None,
                        help="after the warm-up, run only this part (default: everything)")
    parser.add_argument("--archive", type=Path, default=ROOT / "model_store" / "digits.mar",
                        help="the .mar to serve (ignored with --url)")
    parser.add_argument("--url", default=None, help="inference address of a running TorchServe (default: start one)")
    parser.add_argument("--management", default="http://127.0.0.1:8081", help="its management address (with --url)")
    parser.add_argument("--metrics", default="http://127.0.0.1:8082", help="its metrics address (with --url)")
    parser.add_argument("--key-file", type=Path, default=ROOT / "key_file.json", help="its token file (with --url)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "artifacts" / "bench")
    full, quick = DURATIONS["full"]["single"], DURATIONS["quick"]["single"]
    parser.add_argument("--seconds", type=float, default=None,
                        help=f"seconds per load setting (default: {full}, quick {quick})")
    parser.add_argument("--soak", type=int, default=None, metavar="N",
                        help="requests in the soak (default: {full}, quick {quick}; "
                             "0 skips it)".format(**SOAK_REQUESTS))
    parser.add_argument("--kills", type=int, default=None, metavar="N",
                        help="workers killed in the recovery measurement (default: {full}, quick {quick}; "
                             "0 skips it)".format(**KILLS))
    parser.add_argument("--profile", action="store_true", help="sample a worker with py-spy at concurrency 64")
    parser.add_argument("--no-peer", dest="peer", action="store_false",
                        help="do not measure the FastAPI peer (scripts/peer_server.py)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    durations = dict(DURATIONS[mode])
    if args.seconds:
        durations["single"] = durations["multi"] = args.seconds
    soak_requests = SOAK_REQUESTS[mode] if args.soak is None else args.soak
    kills = KILLS[mode] if args.kills is None else args.kills
    if not shutil.which("wrk"):
        print("benchmark.py: wrk not found; `make bench` installs it (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    if args.url is None and not args.archive.is_file():
        print(f"benchmark.py: {args.archive} not found; run `make package` first", file=sys.stderr)
        return 2
    if args.url is not None and args.only == "recovery":
        print("benchmark.py: the recovery measurement kills workers: only with the benchmark's own server (no --url)",
              file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)

    from scripts.local_server import start_server

    work = Path(tempfile.mkdtemp(prefix="ts-bench-"))
    server = None
    try:
        png, npy, labels, pngs = sample_inputs(IMAGES_PER_REQUEST)
        (work / "digit.png").write_bytes(png)
        (work / "digits.npy").write_bytes(npy)

        if args.url is None:
            store = work / "store"
            store.mkdir()
            shutil.copy(args.archive, store / "digits.mar")
            print("starting TorchServe ...", flush=True)
            server = start_server(store, work / "server", "digits.mar")
            inference, management = server.endpoints.inference, server.endpoints.management
            key_file, frontend, metrics = server.endpoints.key_file, server.frontend_pid(), server.endpoints.metrics
        else:
            inference, management, key_file, frontend = args.url.rstrip("/"), args.management, args.key_file, None
            metrics = args.metrics.rstrip("/")
        token, management_token = read_token(key_file, "inference"), read_token(key_file, "management")
        url = f"{inference}/predictions/{args.model}"
        pids = server_pids(management, management_token, args.model, frontend)
        workers = sum(name.startswith("worker") for name in pids)

        print(f"warm-up {durations['warmup']} s ...", flush=True)
        total = run_wrk(url, work / "digit.png", token, "image/png", 16, durations["warmup"])["requests"]
        rate = None  # the soak's first estimate: the concurrency-64 run's (the warm-up's rate is still climbing)
        memory_warm = resident_memory(pids)

        runs, profile, peer = [], [], None
        if args.only is None:
            runs, profile = load_settings(url, work, token, durations, pids, args, metrics=metrics)
            total += sum(run["requests"] for run in runs)
            rate = runs[2]["requests_per_s"]
            if args.peer:
                peer = measure_peer(args.archive if args.url is None else ROOT / "model_store" / "digits.mar",
                                    args.model, work, durations)

        overloaded = None
        if args.only in (None, "overload"):
            overloaded = overload(url, work / "digit.png", token, durations["overload"],
                                  lambda: server_pids(management, management_token, args.model, None))

        soaked = None
        if soak_requests > 0 and args.only in (None, "soak"):
            soak_bodies = []  # different digits in turn: an answer given to the wrong request is caught
            for data, label in answered_right(url, token, pngs):
                (work / f"soak-{label}.png").write_bytes(data)
                soak_bodies.append((work / f"soak-{label}.png", label))
            if mode == "full" and args.only is None:  # the memory reading comes after >= 100,000 requests
                soak_requests = max(soak_requests, MEMORY_REQUESTS - total)
            before = resident_memory(pids)
            soaked = soak(url, soak_bodies, token, soak_requests, rate)
            soaked["rss_before_mib"], soaked["rss_after_mib"] = before, resident_memory(pids)
            total += soaked["requests"]
        memory_end = resident_memory(pids)

        recovered = None
        if kills > 0 and args.only in (None, "recovery"):
            if server is None:
                print("recovery: skipped (it kills workers: only with the benchmark's own server)", flush=True)
            else:
                recovered = recovery(server, args.model, url, work / "digit.png", token, kills,
                                     RECOVERY_LOAD_SECONDS[mode])

        raw = None
        if args.only is None:
            print(f"raw in-process ceiling, {durations['raw']} s ...", flush=True)
            with tempfile.TemporaryDirectory() as unpacked:
                weights = extract_weights(args.archive if args.url is None else ROOT / "model_store" / "digits.mar",
                                          Path(unpacked))
                raw = {"images_per_s": raw_throughput(weights, workers, 1, durations["raw"]), "batch": RAW_BATCH,
                       "processes": workers, "threads": 1,
                       "preprocessing": preprocessing_cost(png, npy, weights_resolution(weights),
                                                           30 if args.quick else 200)}
        results = {
            "machine": {"cpus": os.cpu_count(), "torch_threads_per_worker": 1, "workers": workers},
            "runs": runs,
            "peer": peer,
            "raw": raw,
            "profile_worker_at_c64": profile,
            "overload": overloaded,
            "soak": soaked,
            "recovery": recovered,
            "memory": {"after_warmup_mib": memory_warm, "at_end_mib": memory_end, "requests": total},
            "command": "python scripts/benchmark.py" + "".join(f" {arg}" for arg in (argv or sys.argv[1:])),
        }
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    (args.output_dir / "results.json").write_text(json.dumps(results, indent=2))
    if runs:
        plot(results, args.output_dir / "latency.png")
    print_table(results)
    print(f"\nwrote {args.output_dir / 'results.json'}" + (f" and {args.output_dir / 'latency.png'}" if runs else ""))
    failed = soaked is not None and (soaked["errors"] or soaked["wrong_answers"] or soaked["requests"] < soak_requests)
    failed = failed or overloaded is not None and any(
        overloaded[key] for key in ("other_status", "socket_errors", "timeouts", "worker_restarts"))
    return 1 if failed else 0


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


def scrape_counters(metrics: str) -> dict[str, float]:
    """TorchServe's metrics endpoint (Prometheus text, no token in 0.12.0): each metric's samples summed."""
    totals: dict[str, float] = {}
    try:
        status, text = http_json(f"{metrics}/metrics", None, timeout=10)
    except OSError as error:  # no split then, the load numbers stand
        status, text = None, error
    if status != 200 or not isinstance(text, str):
        print(f"benchmark.py: no latency split, {metrics}/metrics unreadable: {status} {text}", file=sys.stderr)
        return totals
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("{", 1)[0].split(" ", 1)[0], line.rsplit(" ", 1)[1]
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def settled_counters(metrics: str, timeout: float = 5.0) -> dict[str, float]:
    """scrape_counters once two scrapes in a row agree: requests still in flight when wrk stopped are answered
    after it, and the handler's counters reach the frontend through the worker's log lines, a moment after."""
    deadline = time.monotonic() + timeout
    last = scrape_counters(metrics)
    while time.monotonic() < deadline:
        time.sleep(0.3)
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


def start_peer(archive: Path, work: Path, token: str) -> tuple[subprocess.Popen, str]:
    """scripts/peer_server.py (2 uvicorn workers) on a free loopback port, answering /ping; its log in
    work/peer.log. Returns the process (stop it with stop_process_tree) and its base URL."""
    from scripts.local_server import free_ports

    (work / "peer_token").write_text(token)
    port = free_ports(1)[0]
    with open(work / "peer.log", "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "peer_server.py"), "--archive",
                                    str(archive), "--port", str(port), "--token-file", str(work / "peer_token"),
                                    "--workers", "2"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_peer(f"http://127.0.0.1:{port}/ping", process, work / "peer.log")
    except BaseException:
        stop_process_tree(process)
        raise
    return process, f"http://127.0.0.1:{port}"


def measure_peer(archive: Path, model: str, work: Path, durations: dict) -> dict:
    """Start the FastAPI peer, warm it up, run the same load settings, stop it."""
    token = secrets.token_urlsafe(24)
    print("starting the FastAPI peer (2 uvicorn workers) ...", flush=True)
    process, base = start_peer(archive, work, token)
    url = f"{base}/predictions/{model}"
    try:
        run_wrk(url, work / "digit.png", token, "image/png", 16, durations["warmup"])
        runs, _ = load_settings(url, work, token, durations, None, argparse.Namespace(profile=False), who="peer: ")
        return {"server": "FastAPI + uvicorn, 2 workers, batch 1, 1 torch thread each", "runs": runs}
    finally:
        stop_process_tree(process)


def wait_for_peer(ping: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the peer exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            if http_json(ping, None, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the peer did not answer {ping} within {timeout:.0f} s: {log.read_text()[-2000:]}")


def stop_process_tree(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to uvicorn's supervisor (it stops its workers), then SIGKILL to whatever of that tree is left."""
    import psutil

    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    process.terminate()
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for leftover in alive:
        leftover.kill()
    process.wait(timeout=timeout)


def extract_weights(archive: Path, directory: Path) -> Path:
    """The serialized weights inside a .mar (a zip with MAR-INF/MANIFEST.json naming them)."""
    import zipfile

    with zipfile.ZipFile(archive) as mar:
        name = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"]
        path = directory / name
        path.write_bytes(mar.read(name))
    return path


def weights_resolution(weights: Path) -> int:
    import torch

    from handler.digit_handler import checkpoint_resolution

    return checkpoint_resolution(torch.load(weights, map_location="cpu", weights_only=True))


if __name__ == "__main__":
    sys.exit(main())
