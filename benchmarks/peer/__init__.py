"""The benchmark's peer: a plain FastAPI + uvicorn server over the same .mar's model and the same preprocessing
(benchmarks/peer/server.py), what a good engineer would write instead of TorchServe. This module starts and stops
it as a process; `python -m benchmarks.peer` runs it by hand."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from serving.config import ROOT
from serving.ports import free_ports
from serving.processes import kill_all, process_tree, wait_for_exit
from serving.rest import http_json


def start_peer(archive: Path, work: Path, token: str) -> tuple[subprocess.Popen, str]:
    """The peer (2 uvicorn workers) on a free loopback port, answering /ping; its log in
    work/peer.log. Returns the process (stop it with stop_process_tree) and its base URL."""
    (work / "peer_token").write_text(token)
    port = free_ports(1)[0]
    with open(work / "peer.log", "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen([sys.executable, "-m", "benchmarks.peer", "--archive", str(Path(archive).resolve()),
                                    "--port", str(port), "--token-file", str(work / "peer_token"), "--workers", "2"],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for_peer(f"http://127.0.0.1:{port}/ping", process, work / "peer.log")
    except BaseException:
        stop_process_tree(process)
        raise
    return process, f"http://127.0.0.1:{port}"


def wait_for_peer(ping: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the peer exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            if http_json(ping, None, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the peer did not answer {ping} within {timeout:.0f} s: {log.read_text()[-2000:]}")


def stop_process_tree(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to uvicorn's supervisor (it stops its workers), then SIGKILL to whatever of that tree is left."""
    tree = process_tree(process.pid)
    process.terminate()
    kill_all(wait_for_exit(tree, timeout))
    process.wait(timeout=timeout)
