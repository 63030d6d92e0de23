"""scripts/gpu_check.sh: the real check where CUDA exists, a clear skip where not, and its CPU dry run."""
from __future__ import annotations

import glob
import subprocess

import pytest
import torch

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def gpu_check(artifacts, *args: str) -> subprocess.CompletedProcess:
    before = set(glob.glob("/tmp/ts-gpu-check-*"))
    result = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--artifacts", str(artifacts), *args],
                            capture_output=True, text=True, timeout=600)
    assert set(glob.glob("/tmp/ts-gpu-check-*")) <= before, "gpu_check.sh left its temp dir behind"
    return result


def test_gpu_check_runs_the_check_or_says_there_is_no_gpu(artifacts):
    result = gpu_check(artifacts)
    assert result.returncode == 0, result.stdout + result.stderr
    if torch.cuda.is_available():
        assert "every check passed" in result.stdout and "cuda:" in result.stdout
    else:
        assert result.stdout.startswith("gpu_check: no CUDA GPU on this machine")


def test_gpu_check_dry_run_on_cpu_goes_through_every_step(artifacts):
    result = gpu_check(artifacts, "--cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "handler log: 2 of 2 workers loaded the model on cpu" in result.stdout
    assert " of 20 sample digits right" in result.stdout  # the script itself requires 90%
    assert "gpu_check: OK: 2 workers on cpu, every check passed." in result.stdout


def test_gpu_check_refuses_an_unknown_flag(artifacts):
    result = gpu_check(artifacts, "--bogus")
    assert result.returncode == 2 and "unknown argument --bogus" in result.stderr
