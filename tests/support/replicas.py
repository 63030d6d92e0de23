"""Two replicas of the image behind an nginx load balancer on this machine, and their rolling restart: what a
Deployment with two pods behind a Service does, with Docker and nginx (tests/integration/test_rolling_restart.py).

Each replica is a container (`--network host`, its own ports, the same client credential file); the balancer is
Debian's nginx with deploy/docker/load-balancer.conf.template, started here by its pid. A rolling restart stops one
replica the way Kubernetes stops a pod (`docker stop`: SIGTERM, the gateway drains: readiness 503 for DRAIN_SECONDS,
then nginx finishes what it has and TorchServe stops), runs it again (the same image, or the next version's) on the
same ports, waits until it is ready, then does the other.
"""
from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from serving.config import ROOT
from serving.gateways import Gateway, gateway_ports
from serving.ports import free_ports
from tests.support.containers import DockerSession, docker

TEMPLATE = ROOT / "deploy" / "docker" / "load-balancer.conf.template"
RETRY = {
    "retry": ("proxy_next_upstream error timeout http_502 http_503 non_idempotent; proxy_next_upstream_tries 2;",
              "grpc_next_upstream error timeout http_502 http_503 non_idempotent; grpc_next_upstream_tries 2;"),
    "none": ("proxy_next_upstream off;", "grpc_next_upstream off;"),
}
MAX_BODY_BYTES = 6553500  # config.properties' max_request_size: the replica refuses more with its 413


@dataclass
class Outage:
    """One replica's restart: from `docker stop` until it answered ready again."""
    replica: str
    stopped: float  # time.time() when docker stop began
    exited: float
    ready: float
    image: str

    @property
    def seconds_out(self) -> float:
        return self.ready - self.stopped


@dataclass
class Replica:
    label: str  # "A" or "B"
    ports: dict
    image: str
    name: str = ""

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.ports['rest']}"

    def run(self, session: DockerSession, image: str, credential_file: Path, env: dict, timeout: float = 180) -> None:
        self.image = image
        self.name = f"digits-replica-{self.label.lower()}-{secrets.token_hex(3)}"
        environment = {"GATEWAY_ADDRESS": "127.0.0.1", "METRICS_ADDRESS": "127.0.0.1",
                       "GATEWAY_PORT": str(self.ports["rest"]), "GATEWAY_GRPC_PORT": str(self.ports["grpc"]),
                       "METRICS_PORT": str(self.ports["metrics"]), "INTERNAL_PORT_BASE": str(self.ports["internal"]),
                       **env}
        session.run(image, env=environment, credential_file=credential_file, name=self.name)
        self.wait_ready(timeout)

    def is_ready(self) -> bool:
        try:
            return requests.get(f"{self.rest}/healthz/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.rest}/healthz/ready", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        logs = docker("logs", "--tail", "40", self.name, check=False)
        raise TimeoutError(f"replica {self.label} not ready in {timeout:.0f} s:\n{logs.stdout}{logs.stderr}")

    def stop(self, session: DockerSession) -> None:
        docker("stop", "--time", "30", self.name, timeout=90)
        session.remove_container(self.name)


@dataclass
class LoadBalancer(Gateway):
    """nginx in front of the replicas: REST on `rest`, gRPC on `grpc`; `credential` is the replicas' client credential
    (the balancer passes Authorization through). A thread watches each replica's /healthz/ready every 0.2 s and
    reloads nginx with the not-ready ones marked down (what Kubernetes' endpoints controller does for a Service);
    `changes` records each: (time.time(), replica, ready)."""

    process: subprocess.Popen | None = None
    state: Path | None = None
    last_log: str = ""
    replicas: list = field(default_factory=list)
    values: dict = field(default_factory=dict)
    ready: dict = field(default_factory=dict)
    changes: list = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    watcher: threading.Thread | None = None

    @classmethod
    def start(cls, replicas: list[Replica], credential: str, retry: str, watch: bool = True) -> "LoadBalancer":
        rest, grpc_port = free_ports(2)
        balancer = cls(rest=f"http://127.0.0.1:{rest}", grpc=f"127.0.0.1:{grpc_port}", metrics="",
                       credential=credential, kind="load-balancer", ports={"rest": rest, "grpc": grpc_port})
        balancer.state = Path(tempfile.mkdtemp(prefix="digits-lb-"))
        balancer.state.chmod(0o755)
        balancer.replicas = replicas
        a, b = replicas
        rest_retry, grpc_retry = RETRY[retry]
        balancer.values = {"STATE_DIR": str(balancer.state), "MAX_BODY_BYTES": str(MAX_BODY_BYTES),
                           "ADDRESS": "127.0.0.1", "REST_PORT": str(rest), "GRPC_PORT": str(grpc_port),
                           "REST_RETRY": rest_retry, "GRPC_RETRY": grpc_retry,
                           "A_REST_PORT": str(a.ports["rest"]), "B_REST_PORT": str(b.ports["rest"]),
                           "A_GRPC_PORT": str(a.ports["grpc"]), "B_GRPC_PORT": str(b.ports["grpc"])}
        balancer.ready = {replica.label: replica.is_ready() for replica in replicas}
        try:
            config = balancer.render()
            with open(balancer.state / "nginx.out", "wb") as output:
                balancer.process = subprocess.Popen(["nginx", "-c", str(config), "-p", str(balancer.state), "-g",
                                                     "daemon off;"], stdout=output, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL)
        except BaseException:
            balancer.stop()  # its state directory too
            raise
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{balancer.rest}/healthz/live", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if balancer.process.poll() is not None or time.monotonic() > deadline:
                balancer.stop()
                raise RuntimeError(f"the load balancer did not start: {balancer.log()}")
            time.sleep(0.1)
        if watch:
            balancer.watcher = threading.Thread(target=balancer.watch, name="readiness watch", daemon=True)
            balancer.watcher.start()
        return balancer

    def render(self) -> Path:
        values = {**self.values, **{f"{label}_DOWN": "" if ready else " down" for label, ready in self.ready.items()}}
        text = TEMPLATE.read_text()
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        assert "{{" not in text, text
        config = self.state / "nginx.conf"
        config.write_text(text)
        return config

    def watch(self) -> None:
        while not self.stopping.wait(0.2):
            now = {replica.label: replica.is_ready() for replica in self.replicas}
            if now != self.ready:
                for label in now:
                    if now[label] != self.ready[label]:
                        self.changes.append((time.time(), label, now[label]))
                self.ready = now
                self.render()
                self.process.send_signal(signal.SIGHUP)  # nginx reloads: old workers finish what they have

    def log(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-30000:] for path in
                         (self.state / "nginx.out", self.state / "error.log") if path.exists())

    def stop(self) -> None:
        self.stopping.set()
        if self.watcher is not None:
            self.watcher.join(10)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.state is not None:
            self.last_log = self.log()  # for the report, after the state is gone
            shutil.rmtree(self.state, ignore_errors=True)


def replica_ports(count: int) -> list[dict]:
    """Ports for `count` gateways, none shared."""
    while True:
        chosen = [gateway_ports() for _ in range(count)]
        used = [port for ports in chosen for port in
                (ports["rest"], ports["grpc"], ports["metrics"], *range(ports["internal"], ports["internal"] + 5))]
        if len(used) == len(set(used)):
            return chosen


@dataclass
class Rollout:
    """Restarts the replicas one after the other, each onto `image`."""

    session: DockerSession
    replicas: list[Replica]
    credential_file: Path
    env: dict
    outages: list[Outage] = field(default_factory=list)

    def roll(self, image: str, pause: float = 2.0) -> list[Outage]:
        done = []
        for replica in self.replicas:
            stopped = time.time()
            replica.stop(self.session)
            exited = time.time()
            replica.run(self.session, image, self.credential_file, self.env)
            done.append(Outage(replica.label, stopped, exited, time.time(), image))
            time.sleep(pause)  # the balancer sends to the restarted replica again before the next one stops
        self.outages += done
        return done
