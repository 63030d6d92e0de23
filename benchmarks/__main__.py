from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.ceiling import RAW_BATCH, preprocessing_cost, raw_throughput, weights_resolution
from benchmarks.counters import resident_memory, server_pids
from benchmarks.inputs import answered_right, sample_inputs
from benchmarks.load import (DURATIONS, IMAGES_PER_REQUEST, KILLS, RECOVERY_LOAD_SECONDS, SOAK_REQUESTS, SOAK_SETTLE,
                             PEER, SPORADIC_REQUESTS, load_settings, overload, recovery, run_wrk, soak, sporadic)
from benchmarks.peer import start_peer, stop_process_tree
from benchmarks.report import plot, print_table
from serving import launch
from serving.archive import extract_weights, model_name_of
from serving.config import DEFAULT_CONFIG, DEFAULT_MODEL, ROOT
from serving.tokens import read_token

MEMORY_REQUESTS = 100_000  # the full run sends at least this many requests before the final RSS reading


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run of every step, under a minute")
    parser.add_argument("--only", choices=("soak", "recovery", "overload"), default=None,
                        help="after the warm-up, run only this part (default: everything)")
    parser.add_argument("--archive", type=Path, default=ROOT / "model_store" / "digits.mar",
                        help="the .mar to serve (ignored with --url)")
    parser.add_argument("--latency-archive", type=Path, default=ROOT / "model_store" / "digits-latency.mar",
                        help="the model for lone requests (scripts/package.sh --latency; `make bench` builds it): "
                             "served beside --archive and measured at concurrency 1 when the file exists "
                             "(ignored with --url)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="the config.properties to start TorchServe with (default: the repository's; ignored "
                             "with --url): another commit's, to measure it against this one")
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
                        help="do not measure the FastAPI peer (benchmarks/peer)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    durations = dict(DURATIONS[mode])
    if args.seconds:
        durations["single"] = durations["multi"] = args.seconds
    soak_requests = SOAK_REQUESTS[mode] if args.soak is None else args.soak
    kills = KILLS[mode] if args.kills is None else args.kills
    if not shutil.which("wrk"):
        print("benchmarks: wrk not found; `make bench` installs it (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    if args.url is None and not args.archive.is_file():
        print(f"benchmarks: {args.archive} not found; run `make package` first", file=sys.stderr)
        return 2
    if args.url is not None and args.only == "recovery":
        print("benchmarks: the recovery measurement kills workers: only with the benchmark's own server (no --url)",
              file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="ts-bench-"))
    server = None
    try:
        png, npy, labels, pngs = sample_inputs(IMAGES_PER_REQUEST)
        (work / "digit.png").write_bytes(png)
        (work / "digits.npy").write_bytes(npy)

        latency_model = None
        if args.url is None:
            store = work / "store"
            store.mkdir()
            shutil.copy(args.archive, store / "digits.mar")
            archives = ["digits.mar"]
            if args.latency_archive.is_file():
                latency_model = model_name_of(args.latency_archive)
                shutil.copy(args.latency_archive, store / "latency.mar")
                archives.append("latency.mar")
            print(f"starting TorchServe ({', '.join(archives)}) ...", flush=True)
            server = launch.start(store, work / "server", ",".join(archives), config=args.config)
            inference, management = server.endpoints.inference, server.endpoints.management
            key_file, frontend, metrics = server.endpoints.key_file, server.frontend_pid(), server.endpoints.metrics
        else:
            inference, management, key_file, frontend = args.url.rstrip("/"), args.management, args.key_file, None
            metrics = args.metrics.rstrip("/")
        token, management_token = read_token(key_file, "inference"), read_token(key_file, "management")
        url = f"{inference}/predictions/{args.model}"
        pids = server_pids(management, management_token, args.model, frontend)
        workers = sum(name.startswith("worker") for name in pids)
        if latency_model is not None:  # its worker's memory is read too ("latency worker N")
            pids.update({f"latency {name}": pid for name, pid in
                         server_pids(management, management_token, latency_model, None).items()})

        print(f"warm-up {durations['warmup']} s ...", flush=True)
        total = run_wrk(url, work / "digit.png", token, "image/png", 16, durations["warmup"])["requests"]
        rate = None  # the soak's first estimate: the concurrency-64 run's (the warm-up's rate is still climbing)
        memory_warm = resident_memory(pids)

        runs, profile, peer, lone = [], [], None, {}
        if args.only is None:
            runs, profile = load_settings(url, work, token, durations, pids, args, metrics=metrics)
            if latency_model is not None:
                runs.append(measure_latency_model(f"{inference}/predictions/{latency_model}", url, latency_model,
                                                  work, token, durations))
            lone = {name: (f"{inference}/predictions/{name}", token)
                    for name in [args.model] + ([latency_model] if latency_model else [])}
            total += sum(run["requests"] for run in runs)
            rate = runs[2]["requests_per_s"]
            if args.peer:
                peer = measure_peer(args.archive if args.url is None else ROOT / "model_store" / "digits.mar",
                                    args.model, work, durations, lone, SPORADIC_REQUESTS[mode])
                lone = peer.pop("sporadic")  # measured with the peer up: TorchServe's models and the peer in turn
            else:
                print(f"a lone request every 50 ms, {SPORADIC_REQUESTS[mode]} to each model in turn ...", flush=True)
                lone = sporadic(lone, png, SPORADIC_REQUESTS[mode])

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
            soaked = soak(url, soak_bodies, token, soak_requests, rate, SOAK_SETTLE[mode],
                          lambda: resident_memory(pids))
            soaked["rss_before_mib"], soaked["rss_after_mib"] = soaked.pop("settled"), resident_memory(pids)
            soaked["rss_before_after_requests"] = SOAK_SETTLE[mode]
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
            "sporadic": lone,
            "peer": peer,
            "raw": raw,
            "profile_worker_at_c64": profile,
            "overload": overloaded,
            "soak": soaked,
            "recovery": recovered,
            "memory": {"after_warmup_mib": memory_warm, "at_end_mib": memory_end, "requests": total},
            "command": "python -m benchmarks" + "".join(f" {arg}" for arg in (argv or sys.argv[1:])),
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


def measure_latency_model(url: str, batched: str, model: str, work: Path, token: str, durations: dict) -> dict:
    """Concurrency 1 on the model for lone requests (batching off, one worker), after a warm-up of its own. It must
    first give the digit the batched model's answer, byte for byte (the same weights, handler and version)."""
    import requests

    headers, body = {"Authorization": f"Bearer {token}", "Content-Type": "image/png"}, (work / "digit.png").read_bytes()
    answers = [requests.post(address, data=body, headers=headers, timeout=30) for address in (batched, url)]
    if [answer.status_code for answer in answers] != [200, 200] or answers[0].content != answers[1].content:
        raise RuntimeError(f"{model} does not answer as {batched} does: "
                           f"{[(answer.status_code, answer.text[:200]) for answer in answers]}")
    run_wrk(url, work / "digit.png", token, "image/png", 1, durations["warmup"])
    print(f"PNG, concurrency 1, model {model} (batch 1), {durations['single']} s ...", flush=True)
    run = run_wrk(url, work / "digit.png", token, "image/png", 1, durations["single"])
    return {"name": f"PNG, 1 image, c=1, {model}", "model": model, "concurrency": 1, "images_per_request": 1,
            "images_per_s": run["requests_per_s"], **run}


def measure_peer(archive: Path, model: str, work: Path, durations: dict, lone: dict, lone_requests: int) -> dict:
    """Start the FastAPI peer, warm it up, run the same load settings, then the lone requests now and then to it
    and to `lone` (TorchServe's models: name -> (url, token)) in turn; stop it."""
    token = secrets.token_urlsafe(24)
    print("starting the FastAPI peer (2 uvicorn workers) ...", flush=True)
    process, base = start_peer(archive, work, token)
    url = f"{base}/predictions/{model}"
    try:
        run_wrk(url, work / "digit.png", token, "image/png", 16, durations["warmup"])
        runs, _ = load_settings(url, work, token, durations, None, argparse.Namespace(profile=False), who="peer: ")
        print(f"a lone request every 50 ms, {lone_requests} to each of {', '.join([*lone, PEER])} in turn ...",
              flush=True)
        return {"server": "FastAPI + uvicorn, 2 workers, batch 1, 1 torch thread each", "runs": runs,
                "sporadic": sporadic({**lone, PEER: (url, token)}, (work / "digit.png").read_bytes(), lone_requests)}
    finally:
        stop_process_tree(process)


if __name__ == "__main__":
    sys.exit(main())
