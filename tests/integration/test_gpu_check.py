"""scripts/gpu_check.sh: the real check where CUDA exists, a clear skip where not, and its CPU dry run."""
from __future__ import annotations

import glob
import subprocess

import pytest
import torch

from tests.support import ROOT

pytestmark = pytest.mark.integration


def gpu_check(artifacts, *args: str) -> subprocess.CompletedProcess:
    before = set(glob.glob("/tmp/ts-gpu-check-*"))
    result = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--artifacts", str(artifacts), *args],
                            capture_output=True, text=True, timeout=600)
    assert set(glob.glob("/tmp/ts-gpu-check-*")) <= before, "gpu_check.sh left its temp dir behind"
    return result


NO_CUDA = "no CUDA GPU on this machine: GPU workers are not tested here (run scripts/gpu_check.sh on a GPU machine)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_gpu_check_proves_the_workers_run_on_cuda(artifacts):
    result = gpu_check(artifacts)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every check passed" in result.stdout and "workers on gpu" in result.stdout
    assert "digit model loaded on cuda:" in result.stdout and "nvidia-smi CUDA processes:" in result.stdout
    assert "workers loaded the model and preprocess on cuda:" in result.stdout and "(preprocessing on cuda:" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the no-GPU message cannot be seen")
def test_gpu_check_says_so_where_there_is_no_gpu(artifacts):
    """On a machine without CUDA the script checks nothing and says so (exit 0 so `make gpu-check` is usable
    anywhere); this is the message's test, not a GPU test."""
    result = gpu_check(artifacts)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("gpu_check: no CUDA GPU on this machine") and "checked" in result.stdout


def test_gpu_check_dry_run_on_cpu_goes_through_every_step(artifacts):
    result = gpu_check(artifacts, "--cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "handler log: 2 of 2 workers loaded the model and preprocess on cpu" in result.stdout
    assert result.stdout.count("(preprocessing on cpu") == 2
    assert " of 20 sample digits right" in result.stdout  # the script itself requires 90%
    assert "gpu_check: OK: 2 workers on cpu, every check passed." in result.stdout


def test_gpu_check_refuses_an_unknown_flag(artifacts):
    result = gpu_check(artifacts, "--bogus")
    assert result.returncode == 2 and "unknown argument --bogus" in result.stderr
