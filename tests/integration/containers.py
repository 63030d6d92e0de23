"""Docker for the container tests: Debian's docker.io (installed when missing, as root), a daemon started when
none answers, the image built by deploy/docker/build.sh, containers run with --network host (no bridge network:
the container shares this machine's loopback). Everything a test started is removed by it afterwards: containers,
images (the base image too, when the build made it), dangling layers, and the daemon it started.
"""
from __future__ import annotations

import collections
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import requests

from scripts import grpc_client

from tests.conftest import ROOT
from tests.integration.gateways import Gateway, gateway_ports, new_credential, wait_until_ready
from tests.system import ensure_packages, unavailable

DOCKER = {"dockerd": "docker.io", "docker": "docker.io", "debootstrap": "debootstrap"}
ROTATION_MINUTES = 1  # TorchServe's key lifetime in the main test container (TOKEN_EXPIRATION_MIN)
BASE_IMAGE = "debian:bookworm-slim"


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} ... failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result


def daemon_answers() -> bool:
    try:
        return docker("info", timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


class DockerSession:
    """The daemon (ours or the machine's) and what this test session created in it."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.daemon: subprocess.Popen | None = None
        self.images: list[str] = []
        self.containers: list[str] = []
        self.base_image_was_there = True

    def start(self) -> "DockerSession":
        ensure_packages(DOCKER)
        if not daemon_answers():
            if os.geteuid() != 0:
                unavailable("no Docker daemon answers and starting one needs root")
            # No bridge, no iptables: containers use --network host only (this machine allows loopback traffic).
            log = open(self.workdir / "dockerd.log", "wb")
            self.daemon = subprocess.Popen(["dockerd", "--bridge=none", "--iptables=false", "--ip-masq=false"],
                                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True)
            log.close()
            deadline = time.monotonic() + 90
            while not daemon_answers():
                if self.daemon.poll() is not None or time.monotonic() > deadline:
                    tail = (self.workdir / "dockerd.log").read_text(errors="replace")[-2000:]
                    self.stop()
                    unavailable(f"dockerd did not start: {tail}")
                time.sleep(0.5)
        self.base_image_was_there = docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0
        return self

    def build(self, archive: Path, tag: str) -> str:
        self.images.append(tag)
        log_path = self.workdir / "build.log"
        with open(log_path, "wb") as log:
            result = subprocess.run([str(ROOT / "deploy" / "docker" / "build.sh"), "--archive", str(archive),
                                     "--tag", tag], stdout=log, stderr=subprocess.STDOUT, timeout=1800)
        if result.returncode != 0:
            raise RuntimeError(f"build.sh failed:\n{log_path.read_text(errors='replace')[-4000:]}")
        return tag

    def run(self, image: str, *, env: dict[str, str], credential_file: Path, name: str,
            extra: tuple[str, ...] = ()) -> str:
        arguments = ["run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp:exec,size=1g",
                     "--mount", f"type=bind,source={credential_file},target=/run/secrets/digits/token,readonly",
                     "--stop-timeout", "30", *extra]
        for key, value in env.items():
            arguments += ["-e", f"{key}={value}"]
        self.containers.append(name)
        return docker(*arguments, image).stdout.strip()

    def stop(self) -> list[str]:
        """Remove what this session made, stop the daemon it started; returns what could not be removed."""
        problems = []
        for name in self.containers:
            docker("rm", "-f", name, check=False, timeout=60)
        for image in self.images:
            docker("rmi", "-f", image, check=False, timeout=120)
        if not self.base_image_was_there:
            docker("rmi", "-f", BASE_IMAGE, check=False, timeout=120)
        if self.images:
            docker("image", "prune", "-f", check=False, timeout=300)  # the build stage's dangling layers
            docker("builder", "prune", "-af", check=False, timeout=300)
        for name in self.containers:
            if docker("container", "inspect", name, check=False).returncode == 0:
                problems.append(f"container {name}")
        for image in self.images:
            if docker("image", "inspect", image, check=False).returncode == 0:
                problems.append(f"image {image}")
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(60)
            except subprocess.TimeoutExpired:
                problems.append(f"dockerd {self.daemon.pid} needed SIGKILL")
                self.daemon.kill()
                self.daemon.wait()
        return problems


class ContainerGateway(Gateway):
    """The image running as a container: the same gateway/run.py under tini, its ports on this machine's
    loopback (--network host), root filesystem read-only with /tmp a tmpfs, the credential a mounted file."""

    name: str
    session: DockerSession
    started_at: float

    @classmethod
    def run(cls, session: DockerSession, image: str, workdir: Path, env: dict | None = None,
            timeout: float = 300) -> "ContainerGateway":
        ports = gateway_ports()
        credential = new_credential()
        credential_file = workdir / f"token-{secrets.token_hex(4)}"
        credential_file.write_text(credential + "\n")
        credential_file.chmod(0o644)  # the container's user (10001) reads it, as a Secret's defaultMode allows
        gateway = cls(rest=f"http://127.0.0.1:{ports['rest']}", grpc=f"127.0.0.1:{ports['grpc']}",
                      metrics=f"http://127.0.0.1:{ports['metrics']}/metrics", credential=credential,
                      kind="container", ports=ports)
        gateway.session = session
        gateway.name = f"digits-test-{secrets.token_hex(4)}"
        gateway.rate_limit = int((env or {}).get("RATE_LIMIT", gateway.rate_limit))
        gateway.rate_burst = int((env or {}).get("RATE_BURST", gateway.rate_burst))
        environment = {"GATEWAY_ADDRESS": "127.0.0.1", "METRICS_ADDRESS": "127.0.0.1",
                       "GATEWAY_PORT": str(ports["rest"]), "GATEWAY_GRPC_PORT": str(ports["grpc"]),
                       "METRICS_PORT": str(ports["metrics"]), "INTERNAL_PORT_BASE": str(ports["internal"]),
                       **(env or {})}
        gateway.started_at = time.monotonic()
        session.run(image, env=environment, credential_file=credential_file, name=gateway.name)
        wait_until_ready(gateway, gateway.running, timeout, gateway.log_tail)
        return gateway

    def running(self) -> bool:
        return self.state().get("Running", False)

    def state(self) -> dict:
        result = docker("container", "inspect", "--format", "{{json .State}}", self.name, check=False)
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def logs(self) -> str:
        result = docker("logs", self.name, check=False, timeout=60)
        return result.stdout + result.stderr

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def init_pid(self) -> int:
        return int(self.state()["Pid"])

    def processes(self) -> list[psutil.Process]:
        """Every process in the container, seen from this machine (tini and its descendants)."""
        init = psutil.Process(self.init_pid())
        return [init, *init.children(recursive=True)]

    def exec(self, *command: str) -> str:
        return docker("exec", self.name, *command).stdout

    def stop(self, timeout: float = 30) -> tuple[int, float]:
        """docker stop (SIGTERM, SIGKILL after `timeout`): the exit code and the seconds it took."""
        started = time.monotonic()
        docker("stop", "-t", str(int(timeout)), self.name, timeout=timeout + 60)
        return int(self.state()["ExitCode"]), time.monotonic() - started

    def wait_exit(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                raise TimeoutError(f"container {self.name} still running after {timeout:.0f} s")
            time.sleep(0.2)
        return int(self.state()["ExitCode"])


@dataclass
class Traffic:
    """REST and gRPC requests sent steadily from the moment the container is up; every answer recorded."""

    gateway: ContainerGateway
    body: bytes
    label: str
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    failures: list = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def start(self) -> "Traffic":
        self.threads = [threading.Thread(target=self.rest, daemon=True), threading.Thread(target=self.grpc, daemon=True)]
        for thread in self.threads:
            thread.start()
        return self

    def record(self, kind: str, ok: bool, detail: str) -> None:
        self.outcomes[(kind, ok)] += 1
        if not ok:
            self.failures.append((round(time.monotonic() - self.started, 2), kind, detail[:300]))

    def rest(self) -> None:
        with requests.Session() as session:
            while not self.stop.wait(0.05):
                try:
                    response = session.post(f"{self.gateway.rest}/predictions/digits", data=self.body, timeout=30,
                                            headers=self.gateway.auth())
                    ok = response.status_code == 200 and response.json()["label"] == self.label
                    self.record("rest", ok, f"{response.status_code} {response.text}")
                except requests.RequestException as error:
                    self.record("rest", False, repr(error))

    def grpc(self) -> None:
        max_request, max_response = grpc_client.message_limits({})
        with grpc_client.open_channel(self.gateway.grpc, max_request, max_response) as channel:
            while not self.stop.wait(0.05):
                try:
                    answer = grpc_client.predict(channel, self.gateway.credential, "digits", None, self.body, 30)
                    self.record("grpc", answer.get("label") == self.label, json.dumps(answer))
                except grpc.RpcError as error:
                    self.record("grpc", False, f"{error.code()} {error.details()}")

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
