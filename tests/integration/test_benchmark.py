"""scripts/benchmark.py --quick: every step runs against a real TorchServe under wrk. No timing assertions."""
from __future__ import annotations

import glob
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

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
    profile = results["profile_worker_at_c64"]  # py-spy samples of a worker: the handler must show up
    assert profile and all(0 < entry["share"] <= 1 for entry in profile)
    assert any("DigitHandler.handle" in entry["function"] for entry in profile)
    assert set(glob.glob("/tmp/ts-bench-*")) <= before, "the benchmark left its temp dir behind"
