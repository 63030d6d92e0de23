"""Fixtures for the integration tests: fresh .mar files and a real TorchServe (scripts/local_server.py) on its
own ports, with its own temp dir, token auth on."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from scripts.local_server import package, start_server
from tests.conftest import ROOT

BATCH_MODEL = "digits_batch"
# A model with one worker and a long batch delay, so concurrent requests are sure to share a batch.
BATCH_MODEL_CONFIG = """\
minWorkers: 1
maxWorkers: 1
batchSize: 8
maxBatchDelay: 1000
responseTimeout: 30
handler:
  torch_threads: 1
"""


@pytest.fixture(scope="session")
def artifacts_v2(tmp_path_factory) -> Path:
    """A second model for version 2.0: another seed, fewer epochs (seconds), so its answers differ from 1.0's."""
    out = tmp_path_factory.mktemp("artifacts_v2")
    subprocess.run([sys.executable, str(ROOT / "train.py"), "--seed", "2", "--epochs", "8", "--output-dir", str(out)],
                   check=True, cwd=ROOT, capture_output=True)
    return out


@pytest.fixture(scope="session")
def model_store(artifacts, artifacts_v2, tmp_path_factory) -> Path:
    """digits.mar as scripts/package.sh builds it (shipped model-config), digits_v2.mar (model digits, version 2.0),
    and the batching test model."""
    store = tmp_path_factory.mktemp("model_store")
    package(artifacts, store, "digits")
    package(artifacts_v2, store, "digits", version="2.0", archive_name="digits_v2")
    config = tmp_path_factory.mktemp("config") / "batch-model-config.yaml"
    config.write_text(BATCH_MODEL_CONFIG)
    package(artifacts, store, BATCH_MODEL, config)
    return store


@pytest.fixture(scope="session")
def workdir_factory():
    """Short paths under /tmp: worker sockets live in TMPDIR and a Unix socket path has ~100 bytes."""
    made = []

    def make() -> Path:
        path = Path(tempfile.mkdtemp(prefix="ts-test-"))
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def server(model_store, workdir_factory):
    server = start_server(model_store, workdir_factory(), f"digits.mar,{BATCH_MODEL}.mar")
    yield server
    pids = server.stop()
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    assert not alive, f"TorchServe processes left behind: {alive}"
