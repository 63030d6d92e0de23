"""scripts/benchmark.py --quick: every step runs against a real TorchServe under wrk, the soak's short version
(2,000+ requests at concurrency 32, zero errors and zero wrong answers) and one kill -9 recovery included.
No timing assertions beyond the bounds of issue #5 (recovery within 30 s)."""
from __future__ import annotations

import glob
import json
import subprocess
import sys

import pytest

from scripts import benchmark
from tests.conftest import ROOT, png_bytes

pytestmark = pytest.mark.integration


def test_quick_benchmark_measures_every_setting(model_store, tmp_path):
    before = set(glob.glob("/tmp/ts-bench-*"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--quick", "--archive", str(model_store / "digits.mar"),
         "--output-dir", str(tmp_path), "--profile"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [run["name"] for run in results["runs"]] == [
        "PNG, 1 image, c=1", "PNG, 1 image, c=16", "PNG, 1 image, c=64", ".npy, 64 images, c=4",
    ]
    for run in results["runs"]:
        assert run["requests"] > 0 and run["error_count"] == 0, run
        assert 0 < run["latency_us"]["p50"] <= run["latency_us"]["p90"] <= run["latency_us"]["p99"]
    assert results["runs"][3]["images_per_s"] == pytest.approx(results["runs"][3]["requests_per_s"] * 64)
    assert results["raw"]["images_per_s"] > 0 and results["raw"]["processes"] == 2
    assert results["raw"]["preprocessing"]["png_us"] > 0
    memory = results["memory"]
    assert set(memory["after_warmup_mib"]) == set(memory["at_end_mib"]) and "frontend" in memory["at_end_mib"]
    assert sum(name.startswith("worker") for name in memory["at_end_mib"]) == 2
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "raw in-process ceiling" in result.stdout
    soaked = results["soak"]
    assert soaked["requests"] >= 2000 and soaked["concurrency"] == 32
    assert soaked["errors"] == 0 and soaked["wrong_answers"] == 0, soaked
    assert set(soaked["rss_before_mib"]) == set(soaked["rss_after_mib"]) == set(memory["at_end_mib"])
    assert "soak: " in result.stdout and "0 errors, 0 wrong answers" in result.stdout
    recovered = results["recovery"]
    assert recovered["kills"] == 1 and recovered["max_s"] < 30
    assert recovered["failed_requests"] <= benchmark.RECOVERY_CONCURRENCY  # at most the requests in flight
    assert recovered["max_latency_us"] < 30e6  # nothing waited out the response timeout
    profile = results["profile_worker_at_c64"]  # py-spy samples of a worker: the handler must show up
    assert profile and all(0 < entry["share"] <= 1 for entry in profile)
    assert any("DigitHandler.handle" in entry["function"] for entry in profile)
    assert set(glob.glob("/tmp/ts-bench-*")) <= before, "the benchmark left its temp dir behind"


def test_the_soak_check_counts_wrong_answers(server, test_split, tmp_path):
    """The soak's per-answer check can fail: a label the digit is not gives one wrong answer per request."""
    image, label = test_split[0][7], int(test_split[1][7])
    body = tmp_path / "digit.png"
    body.write_bytes(png_bytes(image))
    url = f"{server.endpoints.inference}/predictions/digits"
    right = benchmark.run_wrk(url, body, server.inference_token, "image/png", 4, 1, label)
    wrong = benchmark.run_wrk(url, body, server.inference_token, "image/png", 4, 1, (label + 1) % 10)
    assert right["requests"] > 0 and right["wrong_answers"] == 0 and right["error_count"] == 0
    assert wrong["requests"] > 0 and wrong["wrong_answers"] == wrong["requests"]
