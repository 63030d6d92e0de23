"""The container image itself: who runs, what listens, what is inside, supervision, key rotation over minutes, and
the drain on `docker stop`. (The gateway's behaviour -- predictions, refusals, health -- is test_gateway.py, run
against the image as well as the host.) The module's tests run in file order: the drain stops the container last.
"""
from __future__ import annotations

import collections
import itertools
import json
import re
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import psutil
import pytest
import requests

from tests.support.images import png_bytes
from tests.support.containers import ROTATION_MINUTES, ContainerGateway
from tests.support.gateways import client_session

pytestmark = pytest.mark.integration


def test_every_process_runs_as_the_image_user_not_root(container_gateway):
    assert container_gateway.exec("id", "-u").strip() == "10001"
    processes = container_gateway.processes()
    assert len(processes) >= 6  # tini, the gateway, nginx x2, TorchServe's launcher and Java, 2 workers
    names = {process.name() for process in processes}
    assert {"tini", "nginx", "java"} <= names, names
    assert all(process.uids().real == 10001 and process.uids().effective == 10001 for process in processes), \
        [(process.pid, process.name(), process.uids()) for process in processes]
    assert processes[0].name() == "tini"  # PID 1 in the container: a real init reaps and forwards signals


def test_only_the_expected_ports_listen(container_gateway):
    """nginx: the three gateway ports; TorchServe's Java frontend: its five ports on 127.0.0.1; workers: none."""
    listening = collections.defaultdict(set)
    for process in container_gateway.processes():
        for connection in process.net_connections(kind="inet"):
            if connection.status == psutil.CONN_LISTEN:  # Java lists IPv4 as IPv4-mapped IPv6
                listening[process.name()].add((connection.laddr.ip.removeprefix("::ffff:"), connection.laddr.port))
    ports = container_gateway.ports
    assert {port for _, port in listening["nginx"]} == {ports["rest"], ports["grpc"], ports["metrics"]}
    internal = set(range(ports["internal"], ports["internal"] + 5))
    assert listening["java"] == {("127.0.0.1", port) for port in internal}
    assert set(listening) == {"nginx", "java"}, dict(listening)


def test_the_image_holds_no_compiler_pip_cache_or_secret(container_gateway):
    found = container_gateway.exec("sh", "-c", "command -v gcc cc g++ make; ls /root/.cache /tmp/pip* 2>/dev/null; "
                                   "find / -xdev -name key_file.json -not -path '/proc/*' 2>/dev/null | grep -v '^/tmp/'; "
                                   "true")
    assert found.strip() == ""
    # The client credential reached the container as a mounted file, never as part of the image.
    assert container_gateway.credential not in container_gateway.exec("cat", "/opt/digits/config.properties")


def test_the_root_filesystem_is_read_only(container_gateway):
    with pytest.raises(RuntimeError, match="Read-only file system"):
        container_gateway.exec("touch", "/opt/digits/written")


def test_gpu_check_runs_inside_the_image(container_gateway):
    """scripts/gpu_check.sh inside the image, on the archive it serves and the held-out digits it carries (its CPU dry
    run here: no GPU)."""
    output = container_gateway.exec("/opt/digits/scripts/gpu_check.sh", "--cpu", "--archive",
                                    "/opt/digits/model_store/digits.mar", "--samples", "/opt/digits/samples")
    assert "gpu_check: OK: 2 workers on cpu, every check passed." in output
    assert re.search(r"predictions: \d+ of 20 sample digits right", output), output  # the 20 the image carries


@pytest.mark.parametrize("victim", ["nginx", "java"])
def test_the_container_exits_non_zero_when_a_process_dies(docker_session, image, workdir_factory, victim):
    """Supervision: kill -9 nginx's master or TorchServe's frontend in a running container; the container exits
    with a non-zero status at once instead of limping on."""
    gateway = ContainerGateway.run(docker_session, image, workdir_factory())
    process = next(process for process in gateway.processes() if process.name() == victim
                   and (victim != "nginx" or "master" in " ".join(process.cmdline())))
    process.send_signal(signal.SIGKILL)
    status = gateway.wait_exit(timeout=60)
    assert status != 0, gateway.log_tail()
    assert f"{'nginx' if victim == 'nginx' else 'torchserve'} exited" in gateway.logs().lower()


# ---------------------------------------------------------------- traffic across key rotations

ROTATIONS = 6  # key rotations the traffic must cross (every 15 s with half-minute keys)
AROUND = 5.0  # seconds on either side of a rotation in which both kinds of call must have been answered (each ~50 ms)


@pytest.mark.timeout(480)  # its own deadline (3x the rotation schedule) first, with the log in the message
def test_keys_rotate_under_traffic_and_no_call_is_refused(container_gateway):
    """TorchServe's keys expire after half a minute here (TOKEN_EXPIRATION_MIN=0.5); the gateway rotates them at half
    their life while REST and gRPC clients call steadily (from the container's start, beside the other tests): across
    six rotations not one call refused, and every rotation had calls of both kinds answered right just before and
    just after it."""
    traffic = container_gateway.traffic
    schedule = ROTATIONS * 60 * ROTATION_MINUTES / 2
    deadline = time.monotonic() + 3 * schedule + 60  # far past the schedule: a gateway that stopped rotating fails
    while len(container_gateway.log_times("rotated TorchServe's keys")) < ROTATIONS and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(AROUND)  # the calls after the last rotation
    traffic.finish()
    rotations = [stamp for stamp, _ in container_gateway.log_times("rotated TorchServe's keys")]
    assert len(rotations) >= ROTATIONS, container_gateway.log_tail()
    assert traffic.failures == [], traffic.failures[:10]
    for kind in ("rest", "grpc"):
        sent = traffic.successes(kind)
        uncovered = [rotated for rotated in rotations[:ROTATIONS]
                     if not [t for t in sent if rotated - AROUND <= t < rotated]
                     or not [t for t in sent if rotated <= t < rotated + AROUND]]
        assert not uncovered, (kind, uncovered, len(sent))
    # The keys really do expire: the first inference key is refused by TorchServe now (the host shares the
    # container's loopback, so its internal port is reachable here, with TorchServe's own key only).
    first_key = container_gateway.first_inference_key
    keys = json.loads(container_gateway.exec("cat", "/tmp/digits/key_file.json"))
    assert keys["inference"]["key"] != first_key
    expires = datetime.fromisoformat(keys["inference"]["expiration time"].replace("Z", "+00:00"))
    assert 0 < expires.timestamp() - time.time() <= 60 * ROTATION_MINUTES + 5  # a half-minute key, not 60 minutes
    refused = requests.get(f"http://127.0.0.1:{container_gateway.ports['internal']}/ping",
                           headers={"Authorization": f"Bearer {first_key}"}, timeout=10)
    assert refused.status_code in (400, 401) and refused.json()["type"] == "InvalidKeyException"


# ---------------------------------------------------------------- the drain: last, it stops the container


@dataclass
class Sent:
    request_id: str
    sent_at: float
    status: int | None = None
    error: str | None = None


def test_docker_stop_drains_and_loses_no_accepted_request(container_gateway, test_split):
    """Load from 8 clients (each its own client address: the gateway's rate limit is per address) during
    `docker stop`: readiness turns 503 first, within the drain window after the gateway got SIGTERM; every request
    the gateway accepted (each is in its access log) is answered; the container exits 0 inside the stop timeout."""
    body, label = png_bytes(test_split[0][3]), str(test_split[1][3])
    sent: list[Sent] = []
    lock = threading.Lock()
    stop_sending = threading.Event()
    counter = itertools.count()
    ready_turned_503_at = []

    def client(number: int) -> None:
        with client_session(f"127.0.0.{11 + number}") as session:
            while not stop_sending.is_set():
                record = Sent(f"drain-{number}-{next(counter)}", time.time())
                try:
                    response = session.post(f"{container_gateway.rest}/predictions/digits", data=body, timeout=30,
                                            headers={**container_gateway.auth(), "X-Request-Id": record.request_id})
                    record.status = response.status_code
                    if response.status_code == 200 and response.json()["label"] != label:
                        record.error = f"wrong answer {response.text}"
                except requests.RequestException as error:
                    record.error = type(error).__name__
                    time.sleep(0.05)
                with lock:
                    sent.append(record)

    def readiness() -> None:
        while not stop_sending.is_set():
            try:
                if requests.get(f"{container_gateway.rest}/healthz/ready", timeout=2).status_code == 503:
                    ready_turned_503_at.append(time.time())
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(number,)) for number in range(8)]
    threads.append(threading.Thread(target=readiness))
    for thread in threads:
        thread.start()
    time.sleep(3)
    stop_started = time.time()
    status, seconds = container_gateway.stop(timeout=30)
    stop_sending.set()
    for thread in threads:
        thread.join(60)

    assert status == 0 and seconds < 30, (status, seconds, container_gateway.log_tail())
    (draining_at, draining_line), = container_gateway.log_times("draining: readiness is 503")
    drain_seconds = float(re.search(r"closing the listeners in ([\d.]+) s", draining_line).group(1))
    assert ready_turned_503_at and ready_turned_503_at[0] - draining_at < drain_seconds, \
        (ready_turned_503_at, draining_at, drain_seconds)  # seen before the listeners closed
    accepted = {line.split()[-1].strip('"') for line in container_gateway.logs().splitlines()
                if line.count(" /predictions/digits ") and '"drain-' in line}
    answered = {record.request_id for record in sent if record.status is not None}
    lost = [record for record in sent if record.request_id in accepted and record.status is None]
    assert not lost, lost[:10]
    assert accepted == answered, (len(accepted), len(answered))
    wrong = [record for record in sent if record.status is not None and (record.status != 200 or record.error)]
    assert not wrong, wrong[:10]
    served_while_draining = [record for record in sent if record.status == 200 and record.sent_at > draining_at]
    assert len(served_while_draining) > 20  # the gateway kept answering for DRAIN_SECONDS after SIGTERM
    refused = [record for record in sent if record.status is None]
    assert all(record.sent_at > stop_started for record in refused)  # nothing refused before the stop
    assert all(record.sent_at > ready_turned_503_at[0] for record in refused)  # readiness said so first
    assert "drained and stopped" in container_gateway.logs()
