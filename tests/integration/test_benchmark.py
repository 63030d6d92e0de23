"""python -m benchmarks --quick: every step runs against a real TorchServe under wrk, the soak's short version
(2,000+ requests at concurrency 32, zero errors and zero wrong answers) and one kill -9 recovery included.
No timing assertions beyond the recovery bound (a killed worker replaced within 30 s)."""
from __future__ import annotations

import glob
import json
import re
import subprocess
import sys

import pytest

from benchmarks import load
from tests.support import ROOT
from tests.support.images import png_bytes

pytestmark = pytest.mark.integration


@pytest.mark.timeout(660)  # the script's own limit (600 s) first: its output says where it was
def test_quick_benchmark_measures_every_setting(model_store, tmp_path):
    before = set(glob.glob("/tmp/ts-bench-*"))
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--archive", str(model_store / "digits.mar"),
         "--latency-archive", str(model_store / "digits-latency.mar"), "--output-dir", str(tmp_path), "--profile"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [run["name"] for run in results["runs"]] == [
        "PNG, 1 image, c=1", "PNG, 1 image, c=16", "PNG, 1 image, c=64", ".npy, 64 images, c=4",
        "PNG, 1 image, c=1, digits-latency",  # the model for lone requests, once it answered as digits does
    ]
    for run in results["runs"]:
        assert run["requests"] > 0 and run["error_count"] == 0 and run["latency_us"]["p50"] > 0, run
    # The .npy run as the server counted it: every request wrk counted reached the frontend (a few more may have
    # been in flight when wrk stopped), and the handler answered 64 images for each.
    npy = results["runs"][3]
    counted = npy["counted_by_server"]
    assert npy["requests"] <= counted["ts_inference_requests_total"] <= npy["requests"] + npy["concurrency"], npy
    assert counted["digits_images_total"] == 64 * counted["ts_inference_requests_total"], npy
    # A lone request's time from TorchServe's own counters, measured apart from the client's: each part inside the
    # one that holds it, and TorchServe's own hop (what is left of the frontend's time) positive.
    split = results["runs"][0]["split_ms"]
    assert 0 < split["queue"] < split["frontend"] < split["client"] and 0 < split["handler"] < split["frontend"], split
    assert split["queue"] + split["handler"] < split["frontend"], split
    assert "a lone request (concurrency 1)" in result.stdout
    peer = results["peer"]  # the FastAPI peer, measured with the same settings; its table prints the ratios
    assert [run["name"] for run in peer["runs"]] == [run["name"] for run in results["runs"][:4]]
    for run in peer["runs"]:
        assert run["requests"] > 0 and run["error_count"] == 0, run
    assert "the peer (FastAPI + uvicorn" in result.stdout and "x req/s" in result.stdout
    # A lone request now and then (the page's pattern), to each model and to the peer in turn: every one a 200.
    assert set(results["sporadic"]) == {"digits", "digits-latency", load.PEER}
    for measured in results["sporadic"].values():
        assert measured["requests"] == load.SPORADIC_REQUESTS["quick"] and measured["gap_s"] == load.SPORADIC_GAP_S
        assert 0 < measured["latency_us"]["p50"] <= measured["latency_us"]["p99"], measured
    assert "a lone request every 50 ms, to each in turn" in result.stdout
    assert results["raw"]["images_per_s"] > 0 and results["raw"]["processes"] == 2
    assert results["raw"]["preprocessing"]["png_us"] > 0
    memory = results["memory"]
    assert set(memory["after_warmup_mib"]) == set(memory["at_end_mib"]) and "frontend" in memory["at_end_mib"]
    assert sum(name.startswith("worker") for name in memory["at_end_mib"]) == 2
    assert sum(name.startswith("latency worker") for name in memory["at_end_mib"]) == 1
    # The serving targets, each with this run's figure and whether it is met (here no bound can be judged: a quick
    # run on a shared machine; the lines must be there, with numbers).
    for target in ("c=1 p50 / the peer's, batched model", "c=1 p50 / the peer's, digits-latency",
                   "c=64 req/s / the peer's", "c=64 p99 / p50", ".npy images/s / raw ceiling", "RSS change over"):
        assert re.search(re.escape(target) + r".* \d+\.\d\d  \((<=|>=) [\d.]+: (met|NOT met)\)", result.stdout), target
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "raw in-process ceiling" in result.stdout
    overloaded = results["overload"]  # concurrency 256: every request answered 200 or 503, no worker restarted
    assert overloaded["concurrency"] == 256 and overloaded["answered_200"] > 0, overloaded
    assert overloaded["answered_200"] + overloaded["answered_503"] == overloaded["requests"], overloaded
    for key in ("other_status", "socket_errors", "timeouts", "worker_restarts"):
        assert overloaded[key] == 0, overloaded
    soaked = results["soak"]
    assert soaked["requests"] >= 2000 and soaked["concurrency"] == 32
    assert soaked["errors"] == 0 and soaked["wrong_answers"] == 0, soaked
    assert soaked["digits"] == 10 and soaked["checked_answers"] == soaked["requests"]  # ten digits, each answer checked
    assert set(soaked["rss_before_mib"]) == set(soaked["rss_after_mib"]) == set(memory["at_end_mib"])
    assert soaked["rss_before_after_requests"] == load.SOAK_SETTLE["quick"]  # read once the first 500 were answered
    assert "soak: " in result.stdout and "0 errors, 0 wrong answers" in result.stdout
    recovered = results["recovery"]
    assert recovered["kills"] == 1 and recovered["max_s"] < 30
    assert recovered["failed_requests"] <= load.RECOVERY_CONCURRENCY  # at most the requests in flight
    # "Answered at once" (docs/performance.md "Overload"): no request waited out wrk's 10 s timeout, and the slowest took under 5 s.
    assert recovered["failures_by_kind"].get("timeout", 0) == 0 and recovered["max_latency_us"] < 5e6, recovered
    profile = results["profile_worker_at_c64"]  # py-spy samples of a worker: the handler must show up
    assert profile and all(0 < entry["share"] <= 1 for entry in profile)
    assert any("DigitHandler.handle" in entry["function"] for entry in profile)
    assert set(glob.glob("/tmp/ts-bench-*")) <= before, "the benchmark left its temp dir behind"


def test_the_soak_check_catches_wrong_and_swapped_answers(server, test_split, tmp_path):
    """The soak's per-answer check can fail: two digits sent in turn from 4 connections are all right with their
    true labels, and all wrong when each is expected to be answered with the other's label (a swap)."""
    url = f"{server.endpoints.inference}/predictions/digits"
    pairs = []
    for index in (7, 1):
        (tmp_path / f"{index}.png").write_bytes(png_bytes(test_split[0][index]))
        pairs.append((tmp_path / f"{index}.png", int(test_split[1][index])))
    assert pairs[0][1] != pairs[1][1]
    right = load.run_wrk(url, pairs, server.inference_token, "image/png", 4, 2)
    swapped = load.run_wrk(url, [(pairs[0][0], pairs[1][1]), (pairs[1][0], pairs[0][1])],
                                server.inference_token, "image/png", 4, 2)
    assert right["requests"] > 0 and right["checked_answers"] == right["requests"]
    assert right["wrong_answers"] == 0 and right["error_count"] == 0, right
    assert swapped["requests"] > 0 and swapped["wrong_answers"] == swapped["requests"]


@pytest.mark.timeout(360)
def test_perf_analyzer_and_wrk_measure_the_v2_path_through_the_gateway(model_store, tmp_path):
    """python -m benchmarks.triton --quick: perf_analyzer (binary and JSON tensors) and wrk, each run answered with
    no error, and nothing of the gateway left behind."""
    from tests.support.system import NGINX, ensure_packages

    ensure_packages(NGINX)
    if not (ROOT / ".venv-triton" / "bin" / "perf_analyzer").exists():
        subprocess.run(["make", "-s", "perf-analyzer"], cwd=ROOT, check=True)
    before = set(glob.glob("/tmp/digits-triton-bench-*"))
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.triton", "--quick", "--archive", str(model_store / "digits.mar"),
         "--output-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = json.loads((tmp_path / "triton.json").read_text())["runs"]
    assert [(run["tool"], run["tensors"]) for run in runs] == [
        ("perf_analyzer", "binary"), ("perf_analyzer", "json"), ("wrk", "json")]
    for run in runs:
        assert run["requests_per_s"] > 0 and run["error_count"] == 0, run
        assert 0 < run["latency_us"]["p50"] <= run["latency_us"]["p99"], run
    assert "perf_analyzer  binary" in result.stdout
    assert set(glob.glob("/tmp/digits-triton-bench-*")) == before
