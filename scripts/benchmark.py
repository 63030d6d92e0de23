"""Benchmark the bundle: TorchServe under load from wrk, against the raw in-process ceiling of the same model.

    python scripts/benchmark.py                     # full run (a few minutes): the README's performance table
    python scripts/benchmark.py --quick             # under a minute: proves the benchmark works
    python scripts/benchmark.py --url http://127.0.0.1:8080 --key-file key_file.json   # a running server

It starts its own TorchServe (free ports, own temp dir, token auth on, scripts/local_server.py) from
model_store/digits.mar unless --url is given, and measures with wrk (Debian's package; `make bench` installs it),
one thread, keep-alive connections, on this same machine:

  * single-image PNG requests at concurrency 1, 16 and 64: requests/s, p50/p90/p99 latency, errors;
  * multi-image requests (a .npy of 64 frames per request): images/s;
  * the raw in-process ceiling: the worker's model (same TorchScript optimisation, same torch threads), batched
    forward at batch 64, in as many processes as TorchServe has workers; and the per-image preprocessing cost;
  * worker and frontend RSS after warm-up and at the end (the full run sends >= 100,000 requests first).

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
DURATIONS = {"full": {"warmup": 5, "single": 15, "multi": 10, "raw": 5}, "quick": {"warmup": 1, "single": 2,
                                                                                     "multi": 2, "raw": 1}}
CONCURRENCY = (1, 16, 64)
MULTI_CONCURRENCY = 4


# ---------------------------------------------------------------- inputs


def sample_inputs(count: int) -> tuple[bytes, bytes, list[int]]:
    """(one 28x28 PNG of a real scan, a .npy of `count` real frames, their labels), from scikit-learn's digits."""
    from PIL import Image
    from sklearn.datasets import load_digits

    import train

    digits = load_digits()
    greys = digits.images[:count].astype(np.float32) / 16.0
    frames, labels = train.to_frames(greys, digits.target[:count], train.DIGITS_RESOLUTION)
    pixels = np.rint(frames * 255).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels[0]).save(png, format="PNG")
    npy = io.BytesIO()
    np.save(npy, pixels, allow_pickle=False)
    return png.getvalue(), npy.getvalue(), [int(label) for label in labels]


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
    """Median microseconds per image for the handler's input path: PNG bytes and .npy frames -> tensor."""
    import torch

    from model import preprocessing

    torch.set_num_threads(1)
    png_times, npy_times = [], []
    frames = len(preprocessing.decode_npy_frames(npy))
    for _ in range(repeat):
        start = time.perf_counter()
        preprocessing.image_bytes_to_tensor(png, resolution)
        png_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        preprocessing.frames_to_tensor(preprocessing.decode_npy_frames(npy), resolution)
        npy_times.append((time.perf_counter() - start) / frames)
    return {"png_us": statistics.median(png_times) * 1e6, "npy_frame_us": statistics.median(npy_times) * 1e6}


# ---------------------------------------------------------------- load


def run_wrk(url: str, body: Path, token: str, content_type: str, concurrency: int, seconds: float) -> dict:
    """One wrk run; its JSON summary plus requests/s and error total."""
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
               "-s", str(WRK_SCRIPT), url, "--", str(body), token, content_type]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    summary = json.loads(output.strip().splitlines()[-1])
    summary["requests_per_s"] = summary["requests"] / (summary["duration_us"] / 1e6)
    summary["error_count"] = sum(summary["errors"].values())
    return summary


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
    print(f"\n{'setting':<28} {'req/s':>8} {'images/s':>9} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'errors':>6}")
    for run in results["runs"]:
        latency = run["latency_us"]
        print(f"{run['name']:<28} {run['requests_per_s']:>8.0f} {run['images_per_s']:>9.0f} "
              f"{latency['p50'] / 1e3:>7.2f} {latency['p90'] / 1e3:>7.2f} {latency['p99'] / 1e3:>7.2f} "
              f"{run['error_count']:>6}")
    raw = results["raw"]
    print(f"\nraw in-process ceiling: {raw['images_per_s']:.0f} images/s (batch {raw['batch']}, "
          f"{raw['processes']} processes x {raw['threads']} thread)")
    print(f"preprocessing per image: PNG {raw['preprocessing']['png_us']:.0f} us, "
          f".npy frame {raw['preprocessing']['npy_frame_us']:.0f} us")
    multi = [run for run in results["runs"] if run["images_per_request"] > 1]
    if multi:
        print(f"multi-image requests: {multi[0]['images_per_s']:.0f} images/s = "
              f"{multi[0]['images_per_s'] / raw['images_per_s']:.0%} of the raw ceiling")
    memory = results["memory"]
    for name, before in memory["after_warmup_mib"].items():
        after = memory["at_end_mib"].get(name, float("nan"))
        print(f"RSS {name:<14} {before:7.1f} MiB after warm-up, {after:7.1f} MiB after "
              f"{memory['requests']} requests ({(after - before) / before:+.1%})")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [run for run in results["runs"] if run["images_per_request"] == 1 and run["name"].startswith("PNG")]
    figure, axis = plt.subplots(figsize=(6, 4))
    for key, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:")):
        axis.plot([run["requests_per_s"] for run in runs], [run["latency_us"][key] / 1e3 for run in runs], style,
                  label=key)
    for run in runs:
        axis.annotate(f"c={run['concurrency']}", (run["requests_per_s"], run["latency_us"]["p99"] / 1e3),
                      textcoords="offset points", xytext=(4, 4), fontsize=8)
    axis.set_xlabel("throughput (requests/s)")
    axis.set_ylabel("latency (ms)")
    axis.set_yscale("log")
    axis.set_title("single-image PNG requests, TorchServe 0.12.0, 2 workers")
    axis.legend()
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run of every step, under a minute")
    parser.add_argument("--archive", type=Path, default=ROOT / "model_store" / "digits.mar",
                        help="the .mar to serve (ignored with --url)")
    parser.add_argument("--url", default=None, help="inference address of a running TorchServe (default: start one)")
    parser.add_argument("--management", default="http://127.0.0.1:8081", help="its management address (with --url)")
    parser.add_argument("--key-file", type=Path, default=ROOT / "key_file.json", help="its token file (with --url)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "artifacts" / "bench")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per load setting (default: 15, quick 2)")
    parser.add_argument("--profile", action="store_true", help="sample a worker with py-spy at concurrency 64")
    args = parser.parse_args(argv)
    durations = dict(DURATIONS["quick" if args.quick else "full"])
    if args.seconds:
        durations["single"] = durations["multi"] = args.seconds
    if not shutil.which("wrk"):
        print("benchmark.py: wrk not found; `make bench` installs it (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    if args.url is None and not args.archive.is_file():
        print(f"benchmark.py: {args.archive} not found; run `make package` first", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)

    from scripts.local_server import start_server

    work = Path(tempfile.mkdtemp(prefix="ts-bench-"))
    server = None
    try:
        png, npy, _ = sample_inputs(IMAGES_PER_REQUEST)
        (work / "digit.png").write_bytes(png)
        (work / "digits.npy").write_bytes(npy)
        if args.url is None:
            store = work / "store"
            store.mkdir()
            shutil.copy(args.archive, store / "digits.mar")
            print("starting TorchServe ...", flush=True)
            server = start_server(store, work / "server", "digits.mar")
            inference, management = server.endpoints.inference, server.endpoints.management
            key_file, frontend = server.endpoints.key_file, server.frontend_pid()
        else:
            inference, management, key_file, frontend = args.url.rstrip("/"), args.management, args.key_file, None
        token, management_token = read_token(key_file, "inference"), read_token(key_file, "management")
        url = f"{inference}/predictions/{args.model}"
        pids = server_pids(management, management_token, args.model, frontend)
        workers = sum(name.startswith("worker") for name in pids)

        print(f"warm-up {durations['warmup']} s ...", flush=True)
        total = run_wrk(url, work / "digit.png", token, "image/png", 16, durations["warmup"])["requests"]
        memory_warm = resident_memory(pids)

        runs, profile = [], []
        for concurrency in CONCURRENCY:
            print(f"PNG, concurrency {concurrency}, {durations['single']} s ...", flush=True)
            if args.profile and concurrency == 64:
                from concurrent.futures import ThreadPoolExecutor

                worker = next(pid for name, pid in pids.items() if name.startswith("worker"))
                with ThreadPoolExecutor(1) as pool:
                    sampling = pool.submit(profile_worker, worker, durations["single"] - 2, work / "profile.txt")
                    run = run_wrk(url, work / "digit.png", token, "image/png", concurrency, durations["single"])
                    profile = sampling.result()
                shutil.copy(work / "profile.txt", args.output_dir / "profile.txt")
            else:
                run = run_wrk(url, work / "digit.png", token, "image/png", concurrency, durations["single"])
            runs.append({"name": f"PNG, 1 image, c={concurrency}", "concurrency": concurrency,
                         "images_per_request": 1, "images_per_s": run["requests_per_s"], **run})
            total += run["requests"]
        print(f".npy of {IMAGES_PER_REQUEST}, concurrency {MULTI_CONCURRENCY}, {durations['multi']} s ...", flush=True)
        run = run_wrk(url, work / "digits.npy", token, "application/octet-stream", MULTI_CONCURRENCY,
                      durations["multi"])
        runs.append({"name": f".npy, {IMAGES_PER_REQUEST} images, c={MULTI_CONCURRENCY}",
                     "concurrency": MULTI_CONCURRENCY, "images_per_request": IMAGES_PER_REQUEST,
                     "images_per_s": run["requests_per_s"] * IMAGES_PER_REQUEST, **run})
        total += run["requests"]

        soak_errors = 0
        if not args.quick:
            rate = max(runs[2]["requests_per_s"], 100.0)
            while total < MEMORY_REQUESTS:
                seconds = min(120.0, (MEMORY_REQUESTS - total) / rate + 1)
                print(f"memory soak: {total} requests so far, {seconds:.0f} s more at concurrency 64 ...", flush=True)
                run = run_wrk(url, work / "digit.png", token, "image/png", 64, seconds)
                total += run["requests"]
                soak_errors += run["error_count"]
        memory_end = resident_memory(pids)

        print(f"raw in-process ceiling, {durations['raw']} s ...", flush=True)
        with tempfile.TemporaryDirectory() as unpacked:
            weights = extract_weights(args.archive if args.url is None else ROOT / "model_store" / "digits.mar",
                                      Path(unpacked))
            raw_rate = raw_throughput(weights, workers, 1, durations["raw"])
            resolution = weights_resolution(weights)
        results = {
            "machine": {"cpus": os.cpu_count(), "torch_threads_per_worker": 1, "workers": workers},
            "runs": runs,
            "raw": {"images_per_s": raw_rate, "batch": RAW_BATCH, "processes": workers, "threads": 1,
                    "preprocessing": preprocessing_cost(png, npy, resolution, 30 if args.quick else 200)},
            "profile_worker_at_c64": profile,
            "memory": {"after_warmup_mib": memory_warm, "at_end_mib": memory_end, "requests": total,
                       "soak_errors": soak_errors},
            "command": "python scripts/benchmark.py" + (" --quick" if args.quick else ""),
        }
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    (args.output_dir / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, args.output_dir / "latency.png")
    print_table(results)
    if results["profile_worker_at_c64"]:
        print("\none worker at concurrency 64 (py-spy, share of samples inside each function):")
        for entry in results["profile_worker_at_c64"][:18]:
            print(f"  {entry['share']:6.1%}  {entry['function']}")
    print(f"\nwrote {args.output_dir / 'results.json'} and {args.output_dir / 'latency.png'}")
    return 0


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
