"""This checkout's serving against an older commit's, both up at once, wrk rounds alternating: is a change faster?

    python -m benchmarks.ab --against HEAD~1                     # concurrency 1 and 64, 7 rounds of 6 s each
    python -m benchmarks.ab --against <commit> --concurrency 1 --rounds 9

Each side is the .mar its own tree's scripts/package.sh builds from the same trained model (--artifacts, default
artifacts/, what `make` trains), served by a TorchServe started with its own tree's config.properties (free
ports, token on). Both are up for the whole run, and each round measures both, in turns whose order alternates,
so the machine's drift falls on both alike. Reported per concurrency: each side's medians (p50, p99, requests/s)
and the median of the per-round ratios this / against, the figure to quote: on these shared 2-core machines one
round differs from the next by 20%, a pair measured a few seconds apart much less. Then the RSS of each side's
frontend and workers, after the warm-up and at the end (64 x 15 s rounds send ~350,000 requests per side).
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from benchmarks.counters import resident_memory
from benchmarks.inputs import sample_inputs
from benchmarks.load import run_wrk
from serving import launch
from serving.archive import package
from serving.config import DEFAULT_CONFIG, ROOT

FIGURES = ("p50", "p99", "requests_per_s")


def tree_at(revision: str, directory: Path) -> Path:
    """The repository's files at `revision`, unpacked into `directory`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    return directory


def package_with(tree: Path, artifacts: Path, store: Path) -> None:
    """store/digits.mar as `tree`'s own scripts/package.sh builds it (the venv's archiver)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run([str(tree / "scripts" / "package.sh"), "--artifacts", str(artifacts.resolve()), "--export-path", str(store),
                    "--model-name", "digits"], check=True, env=env, capture_output=True, cwd=tree)


def memory(server: launch.Server) -> dict[str, float]:
    """RSS in MiB of the frontend and of each worker (benchmarks.counters.resident_memory: NaN for one gone)."""
    return resident_memory({"frontend": server.frontend_pid(),
                            **{f"worker {number}": pid for number, pid in enumerate(server.worker_pids("digits"), 1)}})


def figures(run: dict) -> dict[str, float]:
    return {"p50": run["latency_us"]["p50"], "p99": run["latency_us"]["p99"], "requests_per_s": run["requests_per_s"]}


def summarize(rounds: list[dict[str, dict[str, float]]]) -> dict:
    """Rounds of {side: figures} -> each side's median figures and the median per-round ratio this / against."""
    sides = list(rounds[0])
    summary = {side: {figure: statistics.median(r[side][figure] for r in rounds) for figure in FIGURES}
               for side in sides}
    summary["ratio"] = {figure: statistics.median(r["this"][figure] / r["against"][figure] for r in rounds)
                        for figure in FIGURES}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default="HEAD~1", help="the commit to compare with (default HEAD~1)")
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts", help="train.py's output to serve")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per wrk run")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("benchmarks.ab: wrk not found (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ts-ab-"))
    servers: dict[str, launch.Server] = {}
    try:
        old = tree_at(args.against, work / "against")
        for side, tree in (("this", ROOT), ("against", old)):
            (work / side / "store").mkdir(parents=True)
            if tree == ROOT:
                package(args.artifacts, work / side / "store", "digits")
            else:
                package_with(tree, args.artifacts, work / side / "store")
            config = tree / DEFAULT_CONFIG.relative_to(ROOT)
            servers[side] = launch.start(work / side / "store", work / side, "digits.mar", config=config)
        png = work / "digit.png"
        png.write_bytes(sample_inputs(1)[0])

        def measure(side: str, concurrency: int, seconds: float) -> dict[str, float]:
            server = servers[side]
            return figures(run_wrk(f"{server.endpoints.inference}/predictions/digits", png, server.inference_token,
                                   "image/png", concurrency, seconds))

        for side in servers:  # warm-up: the first requests load the workers' caches
            measure(side, 16, 3)
        memory_before = {side: memory(server) for side, server in servers.items()}
        print(f"this checkout against {args.against}: median of {args.rounds} rounds, {args.seconds:g} s each")
        print(f"{'concurrency':>11} {'side':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
        for concurrency in args.concurrency:
            rounds = []
            for number in range(args.rounds):
                order = ("this", "against") if number % 2 == 0 else ("against", "this")
                rounds.append({side: measure(side, concurrency, args.seconds) for side in order})
            summary = summarize(rounds)
            for side in ("against", "this"):
                row = summary[side]
                print(f"{concurrency:>11} {side:>8} {row['p50'] / 1e3:>8.2f} {row['p99'] / 1e3:>8.2f} "
                      f"{row['requests_per_s']:>8.0f}")
            ratio = summary["ratio"]
            print(f"{concurrency:>11} {'ratio':>8} {ratio['p50']:>8.3f} {ratio['p99']:>8.3f} "
                  f"{ratio['requests_per_s']:>8.3f}   (this / against, median of the rounds' ratios)")
        for side, server in servers.items():
            before, after = memory_before[side], memory(server)
            print(f"{side}: RSS after warm-up -> now, MiB: " + ", ".join(
                f"{name} {before[name]:.0f} -> {after[name]:.0f}" for name in before))
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
