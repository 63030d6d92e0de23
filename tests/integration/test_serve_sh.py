"""scripts/serve.sh (what `make serve` and `make demo` run): start, status, stop against a real TorchServe.

serve.sh works in the directory it lives in (key file, logs/), so the test runs a copy of the repository's
serving files in a temp dir, with its own ports and TMPDIR: a TorchServe the user runs is never touched.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

from serving.ports import free_ports
from tests.support import ROOT
from tests.support.images import png_bytes

pytestmark = pytest.mark.integration


@pytest.fixture
def checkout(model_store, workdir_factory) -> tuple[Path, dict]:
    """A minimal copy of the repository (scripts, the serving library, configs, the store, .venv linked) and serve.sh's environment."""
    root = workdir_factory()
    for name in ("config.properties", "log4j2.xml", "metrics.yaml"):
        shutil.copy(ROOT / name, root / name)
    for package in ("scripts", "serving"):
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "model_store").mkdir()
    shutil.copy(model_store / "digits.mar", root / "model_store" / "digits.mar")
    (root / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (root / "tmp").mkdir()
    ports = free_ports(5)
    environ = {name: value for name, value in os.environ.items() if not name.startswith("TS_")}
    environ.update({
        "TMPDIR": str(root / "tmp"), "TEMP": str(root / "tmp"),
        "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{ports[0]}", "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{ports[1]}",
        "TS_METRICS_ADDRESS": f"http://127.0.0.1:{ports[2]}", "TS_GRPC_INFERENCE_PORT": str(ports[3]),
        "TS_GRPC_MANAGEMENT_PORT": str(ports[4]), "TS_INITIAL_WORKER_PORT": str(20000 + ports[0] % 20000),
    })
    yield root, environ
    pid_file = root / "tmp" / ".model_server.pid"  # teardown after a failure: only what this test started
    if pid_file.exists():
        try:
            frontend = psutil.Process(int(pid_file.read_text()))
            for process in [*frontend.children(recursive=True), frontend]:
                process.kill()
        except (psutil.Error, ValueError):
            pass


def serve(checkout, command: str) -> subprocess.CompletedProcess:
    root, environ = checkout
    return subprocess.run([str(root / "scripts" / "serve.sh"), command], env=environ, capture_output=True,
                          text=True, timeout=300)


def test_start_status_stop(checkout, test_split):
    root, environ = checkout
    assert serve(checkout, "status").returncode == 3

    started = serve(checkout, "start")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "TorchServe is running (pid" in started.stdout and "model digits ready" in started.stdout
    frontend = psutil.Process(int((root / "tmp" / ".model_server.pid").read_text()))
    workers = frontend.children(recursive=True)
    assert len(workers) == 2 and (root / "key_file.json").exists()

    status = serve(checkout, "status")
    assert status.returncode == 0 and f"pid {frontend.pid}" in status.stdout
    inference = environ["TS_INFERENCE_ADDRESS"]
    assert f"{inference}/predictions/digits" in status.stdout  # the endpoints it prints are the real ones
    token = json.loads((root / "key_file.json").read_text())["inference"]["key"]
    answer = requests.post(f"{inference}/predictions/digits", data=png_bytes(test_split[0][0]), timeout=30,
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"})
    assert answer.status_code == 200 and answer.json()["label"] == str(test_split[1][0])

    again = serve(checkout, "start")
    assert again.returncode == 1 and "already running" in again.stderr

    stopped = serve(checkout, "stop")
    assert stopped.returncode == 0 and f"TorchServe stopped (pid {frontend.pid})" in stopped.stdout
    assert "SIGKILL" not in stopped.stderr  # a clean stop, not the fallback
    assert not any(process.is_running() and process.status() != psutil.STATUS_ZOMBIE
                   for process in [frontend, *workers])
    assert not (root / "key_file.json").exists()
    assert serve(checkout, "status").returncode == 3
    stopped_again = serve(checkout, "stop")
    assert stopped_again.returncode == 0 and "not running" in stopped_again.stdout


def test_start_without_an_archive_says_what_to_do(checkout):
    root, _ = checkout
    (root / "model_store" / "digits.mar").unlink()
    result = serve(checkout, "start")
    assert result.returncode == 1 and "make package" in result.stderr


def test_unknown_command_prints_usage(checkout):
    result = serve(checkout, "restart")
    assert result.returncode == 2 and "usage: scripts/serve.sh start|stop|status" in result.stderr
