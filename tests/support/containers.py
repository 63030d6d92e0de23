"""Docker for the container tests: Debian's docker.io (installed when missing, as root), a daemon started when
none answers, the image built by deploy/docker/build.sh, containers run with --network host (no bridge network:
the container shares this machine's loopback).

The slow part of the image (apt, pip: minutes on a cold machine) is built in the background as soon as the tests
are collected (`prepare_in_background`), while training and the unit tests run; the image itself is then built on
that cache in seconds. What a session made is removed after it: its containers, its tagged images and their own
top layers, the daemon it started. The build cache (this project's labelled stages, the debootstrapped base image)
is kept for the next run, and a stale generation of it removed; nothing else on the daemon is touched.
`make docker-clean` removes the cache too.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc
import psutil
import requests

from serving.rpc import client as grpc_client
from serving.ports import PortClash, retry_port_clash
from tests.support import ROOT
from tests.support.gateways import Gateway, client_session, gateway_ports, new_credential, wait_until_ready
from tests.support.system import DOCKER, ensure_packages, unavailable

ROTATION_MINUTES = 0.5  # TorchServe's key lifetime in the main test container (TOKEN_EXPIRATION_MIN): rotated at 15 s
BUILD = ROOT / "deploy" / "docker" / "build.sh"
LABEL = "io.digits-serve.project=digits-serve"  # on every layer the Dockerfile builds (and the base build.sh makes)
CACHED_STAGES = ("build", "runtime")  # the Dockerfile's stages before the bundle's own files


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


def image_id(reference: str) -> str | None:
    result = docker("image", "inspect", "--format", "{{.Id}}", reference, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def ancestry(reference: str) -> list[str]:
    """The image and its parents, newest first (the classic builder's layer images; BuildKit records no parents)."""
    chain, current = [], image_id(reference)
    while current:
        chain.append(current)
        result = docker("image", "inspect", "--format", "{{.Parent}}", current, check=False)
        current = result.stdout.strip() if result.returncode == 0 else ""
    return chain


class DockerSession:
    """The daemon (ours or the machine's) and what this test session created in it."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.daemon: subprocess.Popen | None = None
        self.images: list[str] = []
        self.containers: list[str] = []
        self.cache: set[str] = set()  # image ids of this run's build cache (kept after the session)
        self.building: subprocess.Popen | None = None
        self.build_started = 0.0
        self.stopping = False  # set at the session's end: no new build starts
        self.found: set[str] | None = None  # what the daemon held before this session: it must all be there after

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
        self.found = self.inventory()
        return self

    def inventory(self) -> set[str]:
        """Every container and image on the daemon that is not this project's (its cache may be renewed)."""
        ours = set(docker("image", "ls", "-a", "-q", "--no-trunc", "--filter", f"label={LABEL}").stdout.split())
        images = set(docker("image", "ls", "-a", "-q", "--no-trunc").stdout.split()) - ours
        containers = set(docker("ps", "-a", "-q", "--no-trunc").stdout.split())
        return {f"image {image}" for image in images} | {f"container {container}" for container in containers}

    def _build(self, log_name: str, *arguments: str) -> None:
        if self.stopping:
            raise RuntimeError("the test session is ending: no build started")
        log_path = self.workdir / log_name
        self.build_started = time.time()
        with open(log_path, "wb") as log:  # its own process group: build.sh, docker and its index servers
            self.building = subprocess.Popen([str(BUILD), *arguments], stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            status = self.building.wait(timeout=1800)
        except subprocess.TimeoutExpired:
            self.stop_build()
            status = self.building.returncode
        if status != 0:
            raise RuntimeError(f"build.sh {' '.join(arguments)} failed ({status}):\n"
                               f"{log_path.read_text(errors='replace')[-4000:]}")

    def prepare(self) -> None:
        """Build the Dockerfile's slow stages (no archive needed yet) and remember them as the cache to keep."""
        for stage in CACHED_STAGES:
            iid = self.workdir / f"{stage}.iid"
            self._build(f"prepare-{stage}.log", "--target", stage, "--iidfile", str(iid))
            self.cache.update(ancestry(iid.read_text().strip()))

    def build(self, archive: Path, samples: Path, tag: str) -> str:
        self.images.append(tag)
        self._build("build.log", "--archive", str(archive), "--samples", str(samples), "--tag", tag)
        return tag

    def stop_build(self) -> None:
        """A build still under way (the session ended, or it hung): its process group stopped, and the step container
        the daemon was running for it removed (the classic builder leaves it behind, dead, gigabytes)."""
        self.stopping = True
        if self.building is None or self.building.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
            try:
                os.killpg(self.building.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.building.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        listed = docker("ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.ID}} {{.State}} {{.CreatedAt}}",
                        check=False).stdout.splitlines()
        for line in listed:
            container, state, created = line.split(" ", 2)
            stamp = datetime.strptime(" ".join(created.split()[:3]), "%Y-%m-%d %H:%M:%S %z").timestamp()
            if state != "running" and stamp >= int(self.build_started) - 1:
                self.remove_container(container)

    def run(self, image: str, *, env: dict[str, str], credential_file: Path, name: str,
            extra: tuple[str, ...] = ()) -> str:
        arguments = ["run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp:exec,size=1g",
                     "--mount", f"type=bind,source={credential_file},target=/run/secrets/digits/token,readonly",
                     "--stop-timeout", "30", *extra]
        for key, value in env.items():
            arguments += ["-e", f"{key}={value}"]
        self.containers.append(name)
        return docker(*arguments, image).stdout.strip()

    def remove_container(self, name: str) -> None:
        docker("rm", "-f", name, check=False, timeout=60)

    def remove_image(self, tag: str) -> None:
        """The tag, and the layer images only it used (its own files on top of the cached stages)."""
        chain = ancestry(tag)
        if len(chain) <= 1:  # BuildKit: the cache lives apart from the image
            docker("rmi", tag, check=False, timeout=120)
            return
        docker("rmi", "--no-prune", tag, check=False, timeout=120)  # the image itself, chain[0], goes with its tag
        for layer in chain[1:]:
            if layer in self.cache or docker("rmi", "--no-prune", layer, check=False, timeout=120).returncode != 0:
                break  # the cached stages (or another image's layers) from here down

    def remove_stale_cache(self) -> None:
        """This project's labelled layer images that this run's cache no longer uses (an older requirements.txt or
        Dockerfile): each is gigabytes. Untagged ones only; children before parents."""
        if not self.cache:
            return  # no fresh cache to compare with: keep everything
        listed = docker("image", "ls", "-a", "--no-trunc", "--filter", f"label={LABEL}",
                        "--format", "{{.ID}} {{.Repository}}", check=False).stdout.split("\n")
        stale = [line.split()[0] for line in listed if line.strip() and line.split()[1] == "<none>"
                 and line.split()[0] not in self.cache]
        while stale:
            removed = [layer for layer in stale
                       if docker("rmi", "--no-prune", layer, check=False, timeout=120).returncode == 0]
            if not removed:
                break
            stale = [layer for layer in stale if layer not in removed]

    def stop(self) -> list[str]:
        """Remove what this session made, stop the daemon it started; returns what could not be removed."""
        problems = []
        self.stop_build()  # the session ended during a build
        for name in self.containers:
            self.remove_container(name)
        for image in self.images:
            self.remove_image(image)
        self.remove_stale_cache()
        for name in self.containers:
            if docker("container", "inspect", name, check=False).returncode == 0:
                problems.append(f"container {name}")
        for image in self.images:
            if image_id(image) is not None:
                problems.append(f"image {image}")
        if self.found is not None and daemon_answers():
            problems += [f"{thing} was there before the tests and is gone" for thing in self.found - self.inventory()]
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(60)
            except subprocess.TimeoutExpired:
                problems.append(f"dockerd {self.daemon.pid} needed SIGKILL")
                self.daemon.kill()
                self.daemon.wait()
        return problems


class Preparation:
    """Docker made ready in a background thread from collection time on: packages, daemon, the cached stages."""

    def __init__(self, workdir: Path):
        self.session = DockerSession(workdir)
        self.outcome: BaseException | None = None  # a skip, a failure or an error, raised to the fixture
        self.thread = threading.Thread(target=self._prepare, name="docker preparation", daemon=True)

    def _prepare(self) -> None:
        try:
            self.session.start()
            self.session.prepare()
        except BaseException as error:  # pytest's skip and fail are BaseExceptions too
            self.outcome = error

    def result(self) -> DockerSession:
        self.thread.join()
        if self.outcome is not None:
            raise self.outcome
        return self.session


_preparation: Preparation | None = None


def prepare_in_background() -> Preparation:
    """The one Preparation of this test session, started now if collection did not start it."""
    global _preparation
    if _preparation is None:
        _preparation = Preparation(Path(tempfile.mkdtemp(prefix="ts-docker-")))
        _preparation.thread.start()
    return _preparation


def finish_preparation() -> list[str]:
    """Stop what the session started in Docker and remove what it made (a build under way is killed); what could not
    be removed. Called by the fixture's teardown, and at the session's end for a run that never used Docker."""
    global _preparation
    preparation, _preparation = _preparation, None
    if preparation is None:
        return []
    preparation.session.stop_build()  # the thread then ends with the build's failure
    preparation.thread.join(300)
    problems = preparation.session.stop()
    shutil.rmtree(preparation.session.workdir, ignore_errors=True)
    return problems


class ContainerGateway(Gateway):
    """The image running as a container: the same gateway (python -m gateway) under tini, its ports on this machine's
    loopback (--network host), root filesystem read-only with /tmp a tmpfs, the credential a mounted file."""

    name: str
    session: DockerSession
    started_at: float

    @classmethod
    def run(cls, session: DockerSession, image: str, workdir: Path, env: dict | None = None,
            timeout: float = 300) -> "ContainerGateway":
        """The image running on free ports, ready; run again on other ports if one was taken under it."""
        return retry_port_clash(lambda: cls._run(session, image, workdir, env or {}, timeout))

    @classmethod
    def _run(cls, session: DockerSession, image: str, workdir: Path, env: dict, timeout: float) -> "ContainerGateway":
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
        gateway.rate_limit = int(env.get("RATE_LIMIT", gateway.rate_limit))
        gateway.rate_burst = int(env.get("RATE_BURST", gateway.rate_burst))
        environment = {"GATEWAY_ADDRESS": "127.0.0.1", "METRICS_ADDRESS": "127.0.0.1",
                       "GATEWAY_PORT": str(ports["rest"]), "GATEWAY_GRPC_PORT": str(ports["grpc"]),
                       "METRICS_PORT": str(ports["metrics"]), "INTERNAL_PORT_BASE": str(ports["internal"]), **env}
        gateway.started_at = time.monotonic()
        session.run(image, env=environment, credential_file=credential_file, name=gateway.name)
        try:
            wait_until_ready(gateway, gateway.running, timeout, gateway.logs)
        except PortClash:
            session.remove_container(gateway.name)
            raise
        return gateway

    def running(self) -> bool:
        return self.state().get("Running", False)

    def state(self) -> dict:
        result = docker("container", "inspect", "--format", "{{json .State}}", self.name, check=False)
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def logs(self) -> str:
        result = docker("logs", self.name, check=False, timeout=60)
        return result.stdout + result.stderr

    def log_times(self, text: str) -> list[tuple[float, str]]:
        """(when Docker received the line, the line) for each log line holding `text`: wall-clock seconds, comparable
        with time.time() on this machine."""
        result = docker("logs", "--timestamps", self.name, check=False, timeout=60)
        found = []
        for line in (result.stdout + result.stderr).splitlines():
            stamp, _, message = line.partition(" ")
            if text in message:  # RFC 3339 with nanoseconds: keep microseconds for fromisoformat
                whole, _, fraction = stamp.rstrip("Z").partition(".")
                found.append((datetime.fromisoformat(f"{whole}.{fraction[:6]:0<6}+00:00").timestamp(), message))
        return sorted(found)

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
    """REST and gRPC requests sent steadily from the moment the container is up; every call recorded with its wall
    clock times (comparable with `docker logs --timestamps`). REST comes from 127.0.0.2, a client address of its own,
    so the gateway's per-address rate limit never meets the other tests' requests."""

    gateway: ContainerGateway
    body: bytes
    label: str
    calls: dict = field(default_factory=lambda: {"rest": [], "grpc": []})  # kind: [(sent, answered, ok)]
    failures: list = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list = field(default_factory=list)

    def start(self) -> "Traffic":
        self.threads = [threading.Thread(target=self.rest, daemon=True), threading.Thread(target=self.grpc, daemon=True)]
        for thread in self.threads:
            thread.start()
        return self

    def record(self, kind: str, sent: float, ok: bool, detail: str) -> None:
        self.calls[kind].append((sent, time.time(), ok))
        if not ok:
            self.failures.append((sent, kind, detail[:300]))

    def successes(self, kind: str) -> list[float]:
        """When each right answer was sent."""
        return [sent for sent, _, ok in self.calls[kind] if ok]

    def rest(self) -> None:
        with client_session("127.0.0.2") as session:
            while not self.stop.wait(0.05):
                sent = time.time()
                try:
                    response = session.post(f"{self.gateway.rest}/predictions/digits", data=self.body, timeout=30,
                                            headers=self.gateway.auth())
                    ok = response.status_code == 200 and response.json()["label"] == self.label
                    self.record("rest", sent, ok, f"{response.status_code} {response.text}")
                except requests.RequestException as error:
                    self.record("rest", sent, False, repr(error))

    def grpc(self) -> None:
        max_request, max_response = grpc_client.message_limits({})
        with grpc_client.open_channel(self.gateway.grpc, max_request, max_response) as channel:
            while not self.stop.wait(0.05):
                sent = time.time()
                try:
                    answer = grpc_client.predict(channel, self.gateway.credential, "digits", None, self.body, 30)
                    self.record("grpc", sent, answer.get("label") == self.label, json.dumps(answer))
                except grpc.RpcError as error:
                    self.record("grpc", sent, False, f"{error.code()} {error.details()}")

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
