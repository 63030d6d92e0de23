"""The gateway (python -m gateway: nginx in front of TorchServe) started as a process of ours on this machine: on free
loopback ports, ready, and stopped by its own pid (the tests, and benchmarks that measure through the gateway).

`Gateway` is what a caller uses of a started gateway; tests/support/containers.py starts the same in a container.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from serving.config import ROOT
from serving.ports import PortClash, free_ports, port_taken, retry_port_clash
from serving.processes import pid_alive


@dataclass
class Gateway:
    rest: str  # http://127.0.0.1:PORT: /predictions/..., /healthz/live, /healthz/ready
    grpc: str  # 127.0.0.1:PORT
    metrics: str  # http://127.0.0.1:PORT/metrics
    credential: str
    kind: str  # "host" or "container"
    ports: dict = field(default_factory=dict)
    rate_limit: int = 200  # RATE_LIMIT, requests/s per client address (the gateway's default)
    rate_burst: int = 400  # RATE_BURST

    def auth(self, credential: str | None = None) -> dict:
        return {"Authorization": f"Bearer {credential or self.credential}"}

    def predict(self, body: bytes, model: str = "digits", **kwargs) -> requests.Response:
        headers = {**self.auth(), "Content-Type": "application/octet-stream", **kwargs.pop("headers", {})}
        return requests.post(f"{self.rest}/predictions/{model}", data=body, headers=headers,
                             timeout=kwargs.pop("timeout", 30), **kwargs)


def new_credential() -> str:
    return secrets.token_hex(24)


def gateway_ports() -> dict:
    rest, grpc_port, metrics = free_ports(3)
    # TorchServe's five internal ports sit at internal..internal+4 (its workers' Unix sockets are named by +1000).
    base = free_ports(5, consecutive=True)[0]
    while {rest, grpc_port, metrics} & set(range(base, base + 5)):
        base = free_ports(5, consecutive=True)[0]
    return {"rest": rest, "grpc": grpc_port, "metrics": metrics, "internal": base}


def wait_until_ready(gateway: Gateway, is_alive, timeout: float, logs) -> None:
    """Until /healthz/ready answers 200. Raises PortClash when the gateway's log (`logs()`, all of it) says a port was
    taken under it, RuntimeError if it exited, TimeoutError otherwise; each with the log's tail."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not is_alive():
            start_failed(gateway, logs(), RuntimeError, "exited during start-up")
        try:
            response = requests.get(f"{gateway.rest}/healthz/ready", timeout=5)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except requests.RequestException as error:
            last = str(error)
        time.sleep(0.5)
    start_failed(gateway, logs(), TimeoutError, f"was not ready in {timeout:.0f} s ({last})")


def start_failed(gateway: Gateway, log_text: str, error: type, what: str):
    tail = "\n".join(log_text.splitlines()[-60:])
    raise (PortClash if port_taken(log_text) else error)(f"the {gateway.kind} gateway {what}:\n{tail}")


class HostGateway(Gateway):
    """python -m gateway as a process on this machine (nginx from Debian's packages, TorchServe from .venv)."""

    process: subprocess.Popen
    workdir: Path

    @classmethod
    def start(cls, store: Path, workdir: Path, *extra_args: str, credential: str | None = None,
              timeout: float = 180) -> "HostGateway":
        """The gateway on free ports, ready; started again on other ports if one was taken under it."""
        credential = credential or new_credential()
        return retry_port_clash(lambda: cls._start(store, workdir, extra_args, credential, timeout))

    @classmethod
    def _start(cls, store: Path, workdir: Path, extra_args, credential: str, timeout: float) -> "HostGateway":
        ports = gateway_ports()
        gateway = cls(rest=f"http://127.0.0.1:{ports['rest']}", grpc=f"127.0.0.1:{ports['grpc']}",
                      metrics=f"http://127.0.0.1:{ports['metrics']}/metrics", credential=credential, kind="host",
                      ports=ports)
        gateway.workdir = workdir
        environ = {name: value for name, value in os.environ.items() if not name.startswith("TS_")}
        environ["DIGITS_CLIENT_TOKEN"] = credential
        command = [sys.executable, "-m", "gateway", "--state-dir", str(workdir / "state"),
                   "--model-store", str(store), "--address", "127.0.0.1", "--metrics-address", "127.0.0.1",
                   "--port", str(ports["rest"]), "--grpc-port", str(ports["grpc"]),
                   "--metrics-port", str(ports["metrics"]), "--internal-port-base", str(ports["internal"]),
                   "--credential-file", str(workdir / "no-such-file"), *extra_args]
        with open(workdir / "gateway.log", "wb") as output:
            gateway.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, env=environ, cwd=ROOT)
        try:
            wait_until_ready(gateway, lambda: gateway.process.poll() is None, timeout, gateway.log)
        except BaseException:
            gateway.kill()
            raise
        return gateway

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def log(self) -> str:
        path = self.workdir / "gateway.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            return []

    def stop(self, timeout: float = 60) -> tuple[int | None, list[int]]:
        """SIGTERM to the gateway (the drain), then wait. Returns its exit status and the pids still alive after it."""
        started_pids = [child.pid for child in self.descendants()]
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            status = None
        alive = [pid for pid in started_pids if pid_alive(pid)]
        self.kill(started_pids)
        return status, alive

    def kill(self, pids: list[int] | None = None) -> None:
        """Teardown after a failure: SIGKILL to the gateway and whatever it started (never a clean-stop claim)."""
        pids = pids if pids is not None else [child.pid for child in self.descendants()]
        for pid in [self.process.pid, *pids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.process.wait()
