"""Faults under load: mixed traffic through the host gateway (REST one image, REST 8 images, REST refused,
gRPC, v2; tests/support/mixed_load.py) while the test
  1. kills a TorchServe worker (SIGKILL),
  2. adds a client credential, moves the clients to it and removes the old one (the credential file, read again
     every second),
  3. forces a rotation of TorchServe's keys (SIGUSR1 to the gateway),
  4. makes a rotation fail: TorchServe's management port refuses connections (an iptables rule on loopback), then
     answers again.
Every answer is checked; the test prints what was sent and what failed, by kind and cause.

What must hold: no wrong answer; no request refused that carried a valid credential; no failure at all outside the
worker kill (from the kill until TorchServe's replacement worker is READY), and inside it at most one per client (the
requests the killed worker held: TorchServe answers them 500 or 507 "Worker died.", which the gateway turns into 503
or gRPC UNAVAILABLE), each answered right when the client sends it once more. A failed rotation costs nothing: the
current keys stay valid, the gateway counts it, logs it and tries again, and the next try rotates.

A second test kills the workers while they hold one request of each protocol (stopped with SIGSTOP first, so that the
request is certainly theirs) and checks the whole answer the client gets.

`make soak` runs the same cycle again and again for SOAK_MINUTES (default 10) and prints the counts.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

import grpc
import pytest
import requests

from serving.management import RestManagement, worker_counts
from serving.rpc import client as grpc_client
from serving.tokens import TokenFileError, read_token
from tests.support.mixed_load import KINDS, Credentials, Traffic, rest_answers, v2_pixels_body
from tests.support.gateways import HostGateway, new_credential, scrape
from tests.support.images import png_bytes
from tests.support.system import NGINX, ensure_packages, unavailable

SOAK_MINUTES = float(os.environ.get("SOAK_MINUTES", "0"))  # 0: one cycle (make test); make soak sets it
IMAGES = 24  # held-out digits the clients cycle through
RULE_COMMENT = "digits-faults-test"


def management(gateway: HostGateway) -> RestManagement:
    key_file = gateway.workdir / "state" / "key_file.json"
    return RestManagement(f"http://127.0.0.1:{gateway.ports['internal'] + 1}", read_token(key_file, "management"), 5)


def describe(gateway: HostGateway) -> list[dict]:
    for _ in range(50):
        try:
            return management(gateway).describe("digits")
        except (TokenFileError, OSError):  # the key file is being rewritten by a rotation
            time.sleep(0.1)
    raise AssertionError("TorchServe's management API did not answer")


def wait(condition, timeout: float, what: str, gateway: HostGateway) -> float:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{gateway.log_tail()}")
        time.sleep(0.1)
    return time.time()


def iptables_usable() -> None:
    if os.geteuid() != 0:
        unavailable("making TorchServe's management port refuse connections needs root (iptables)")
    ensure_packages({"iptables": "iptables"})
    probe = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True)
    if probe.returncode != 0:
        unavailable(f"iptables cannot read the INPUT chain here: {probe.stderr.strip()}")


def replace_file(path, text: str) -> None:
    """Write beside, then rename over: readers see the old file or the new one, never half of it (as the kubelet
    updates a mounted Secret)."""
    new = path.with_name(path.name + ".new")
    new.write_text(text)
    new.replace(path)


@contextlib.contextmanager
def port_refused(port: int):
    """Connections to 127.0.0.1:port answered with a TCP reset while inside (one rule on loopback, removed after)."""
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-m", "comment", "--comment", RULE_COMMENT,
            "-j", "REJECT", "--reject-with", "tcp-reset"]
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True)


@pytest.fixture
def fault_gateway(model_store, workdir_factory):
    ensure_packages(NGINX)
    iptables_usable()
    workdir = workdir_factory()
    credential_file = workdir / "client-credentials"
    first = new_credential()
    credential_file.write_text(first + "\n")
    gateway = HostGateway.start(model_store, workdir, "--load-models", "digits.mar", "--credential-file",
                                str(credential_file), "--rate-limit", "100000", "--rate-burst", "100000",
                                credential=first)
    gateway.credential_file = credential_file
    try:
        yield gateway
    finally:
        status, alive = gateway.stop()
        assert status == 0, f"the gateway exited {status} on SIGTERM:\n{gateway.log_tail()}"
        assert not alive, f"processes left behind by the gateway: {alive}"
        rules = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True).stdout
        assert RULE_COMMENT not in rules, rules


def replaced_workers(gateway: HostGateway, before: set[int], killed: set[int]) -> bool:
    """The model has its two workers again: the ones of `before` not killed, and one new worker for each killed."""
    workers = describe(gateway)[0]["workers"]
    pids = {int(worker["pid"]) for worker in workers}
    return not pids & killed and worker_counts([{"modelVersion": "-", "workers": workers}])["-"] == (2, 2) \
        and len(pids - before) == len(killed)


class Cycle:
    """One round of the four faults, with the windows in which failures are allowed (the worker kill's)."""

    def __init__(self, gateway: HostGateway, traffic: Traffic, credentials: Credentials):
        self.gateway, self.traffic, self.credentials = gateway, traffic, credentials
        self.kill_windows: list[tuple[float, float]] = []
        self.events: list[str] = []

    def everyone_answered_since(self, moment: float) -> bool:
        return all(self.traffic.answered_ok(kind, moment) for kind in KINDS)

    def settle(self, moment: float) -> None:
        try:
            wait(lambda: self.everyone_answered_since(moment), 60, "every kind of client answered again", self.gateway)
        except AssertionError as error:
            last = {call.kind: call.outcome for call in self.traffic.failures()}
            raise AssertionError(f"{error}\ncalls: {self.traffic.counts()}\nlast failure of each kind: {last}") from None

    def kill_a_worker(self) -> None:
        workers = describe(self.gateway)[0]["workers"]
        pid = int(workers[0]["pid"])
        before = {int(worker["pid"]) for worker in workers}
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        back = wait(lambda: replaced_workers(self.gateway, before, {pid}), 120, "TorchServe replaced the killed worker",
                    self.gateway)
        self.kill_windows.append((killed - 0.5, back))
        self.events.append(f"worker {pid} killed: replaced in {back - killed:.1f} s")
        self.settle(back)

    def move_credentials(self) -> None:
        old, new = self.credentials.current, new_credential()
        written = time.time()
        replace_file(self.gateway.credential_file, f"{old}\n{new}\n")
        added = wait(lambda: scrape(self.gateway)["digits_gateway_client_credentials"] == 2, 10,
                     "the gateway took the added credential", self.gateway)
        self.credentials.current = new
        time.sleep(1)  # the calls still carrying the old credential are answered
        removing = time.time()
        replace_file(self.gateway.credential_file, f"{new}\n")
        probe = png_bytes(self.traffic.images[0])

        def old_refused() -> bool:
            return requests.post(f"{self.gateway.rest}/predictions/digits", data=probe, timeout=10,
                                 headers={"Authorization": f"Bearer {old}"}).status_code == 401
        removed = wait(old_refused, 10, "the removed credential refused", self.gateway)
        self.events.append(f"credential added (accepted {added - written:.1f} s after the write), clients moved, "
                           f"old one removed (refused {removed - removing:.1f} s after the write)")
        self.settle(removed)

    def rotations(self) -> int:
        return self.gateway.log().count("rotated TorchServe's keys")

    def force_rotation(self) -> None:
        before = self.rotations()
        asked = time.time()
        os.kill(self.gateway.process.pid, signal.SIGUSR1)
        done = wait(lambda: self.rotations() > before, 15, "a rotation after SIGUSR1", self.gateway)
        self.events.append(f"keys rotated on SIGUSR1 (logged {done - asked:.1f} s after the signal)")
        self.settle(done)

    def fail_a_rotation(self) -> None:
        before, failed_before = self.rotations(), scrape(self.gateway)["digits_gateway_key_rotation_failures_total"]
        log_failures = self.gateway.log().count("rotating TorchServe's keys failed")
        with port_refused(self.gateway.ports["internal"] + 1):
            os.kill(self.gateway.process.pid, signal.SIGUSR1)
            failed = wait(lambda: self.gateway.log().count("rotating TorchServe's keys failed") > log_failures, 15,
                          "the gateway logged the failed rotation", self.gateway)
            assert scrape(self.gateway)["digits_gateway_key_rotation_failures_total"] > failed_before
            assert self.rotations() == before, "a rotation succeeded with the management port refusing"
            time.sleep(2)  # serving on the current keys meanwhile
            self.settle(failed)
        reopened = time.time()
        done = wait(lambda: self.rotations() > before, 30, "the retried rotation", self.gateway)
        self.events.append(f"rotation failed (management port refused), retried {done - reopened:.1f} s after "
                           "the port answered again")
        self.settle(done)

    def run(self) -> None:
        self.kill_a_worker()
        self.move_credentials()
        self.force_rotation()
        self.fail_a_rotation()


@pytest.mark.timeout(600 + 60 * SOAK_MINUTES * 2)
def test_faults_under_mixed_load_lose_only_what_the_killed_worker_held(fault_gateway, test_split):
    gateway = fault_gateway
    images = test_split[0][:IMAGES]
    answers = {"1.0": rest_answers(gateway, gateway.credential, images)}  # each digit's answer alone, before the load
    credentials = Credentials(gateway.credential)
    traffic = Traffic(gateway, credentials, images, answers, retry=True).start()
    cycle = Cycle(gateway, traffic, credentials)
    started = time.monotonic()
    cycles = 0
    try:
        cycle.settle(time.time() - 1)
        while True:
            cycle.run()
            cycles += 1
            if time.monotonic() - started >= 60 * SOAK_MINUTES:
                break
        time.sleep(1)
    finally:
        traffic.finish()

    counts = traffic.counts()
    total = sum(sum(counter.values()) for counter in counts.values())
    print(f"\n{cycles} fault cycle(s) in {time.monotonic() - started:.0f} s, {total} calls:")
    for kind, counter in counts.items():
        print(f"  {kind:<9} " + ", ".join(f"{outcome}: {count}" for outcome, count in counter.most_common()))
    print("  " + "\n  ".join(cycle.events))

    failures = traffic.failures()
    wrong = [call for call in failures if call.outcome.startswith("wrong answer")]
    assert not wrong, wrong[:5]
    refused = [call for call in failures if "401" in call.outcome or "UNAUTHENTICATED" in call.outcome]
    assert not refused, refused[:5]

    def in_a_kill_window(call) -> bool:
        return any(began <= call.sent <= ended for began, ended in cycle.kill_windows)
    outside = [call for call in failures if not in_a_kill_window(call)]
    assert not outside, (outside[:5], cycle.kill_windows)
    assert len(failures) <= len(KINDS) * cycles, failures
    for call in failures:  # what the killed worker held: a status a client sends again, and sent again, answered
        assert call.outcome.startswith(("HTTP 503", "UNAVAILABLE")) and "Worker died." in call.outcome, call
        assert call.retried == "ok", call
    assert all(counter["ok"] > 10 * cycles for counter in counts.values()), counts


def kill_the_workers_holding(gateway: HostGateway, send) -> tuple:
    """send() while every worker of the model is stopped (SIGSTOP), then SIGKILL them all: TorchServe hands a request
    to an idle worker within maxBatchDelay (1 ms), so after a second the stopped workers hold it. Returns what send()
    returned once TorchServe has answered, after both workers were replaced."""
    pids = {int(worker["pid"]) for worker in describe(gateway)[0]["workers"]}
    answer = []
    thread = threading.Thread(target=lambda: answer.append(send()), daemon=True)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        thread.start()
        time.sleep(1.0)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    thread.join(60)
    assert answer, "no answer within 60 s of the workers' death"
    wait(lambda: replaced_workers(gateway, pids, pids), 120, "TorchServe replaced both killed workers", gateway)
    return answer[0]


def test_a_request_whose_worker_died_is_503_or_unavailable_and_answered_when_sent_again(fault_gateway, test_split):
    gateway = fault_gateway
    image = test_split[0][0]
    label = rest_answers(gateway, gateway.credential, [image])[0]["label"]
    max_request, max_response = grpc_client.message_limits({})

    def post(path: str, body: bytes) -> tuple:
        response = requests.post(f"{gateway.rest}{path}", data=body, headers=gateway.auth(), timeout=60)
        return response.status_code, response.headers.get("Content-Type", ""), response.json()

    with grpc_client.open_channel(gateway.grpc, max_request, max_response) as channel:
        def grpc_predict() -> tuple:
            try:
                return "OK", grpc_client.predict(channel, gateway.credential, "digits", None, png_bytes(image), 60)
            except grpc.RpcError as error:
                return error.code().name, error.details()

        sends = {
            "rest": lambda: post("/predictions/digits", png_bytes(image)),
            "v2": lambda: post("/v2/models/digits/infer", v2_pixels_body(image)),
            "grpc": grpc_predict,
        }
        lost = {}
        for kind, send in sends.items():
            for _ in range(3):  # a request sent after the kill is the replacements' and answered: kill again
                lost[kind] = kill_the_workers_holding(gateway, send)
                if lost[kind][0] not in (200, "OK"):
                    break
            again = send()  # the same request, sent once more: answered right
            if kind == "rest":
                assert again[0] == 200 and again[2]["label"] == label, again
            elif kind == "v2":
                outputs = {output["name"]: output["data"] for output in again[2]["outputs"]}
                assert again[0] == 200 and str(outputs["labels"][0]) == str(label), again
            else:
                assert again[0] == "OK" and again[1]["label"] == label, again
        metrics = scrape(gateway)

    print(f"\nanswers to the requests the killed workers held: {lost}")
    status, content_type, body = lost["rest"]
    assert status == 503 and content_type.startswith("application/json"), lost["rest"]
    assert set(body) == {"code", "type", "message"} and body["code"] == 503, body
    assert "Worker died." in body["message"] and "send it again" in body["message"], body
    status, content_type, body = lost["v2"]
    assert status == 503 and content_type.startswith("application/json"), lost["v2"]
    assert set(body) == {"error"} and "Worker died." in body["error"], body  # the protocol's shape
    code, details = lost["grpc"]
    assert code == "UNAVAILABLE" and details.startswith("Worker died.") and "send it again" in details, lost["grpc"]
    assert metrics.get('digits_gateway_requests_total{protocol="rest",code="503"}', 0) >= 2, metrics
