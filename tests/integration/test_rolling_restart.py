"""Two replicas of the image behind an nginx load balancer, restarted one after the other under steady mixed load from
keep-alive clients: tests/support/replicas.py, tests/support/mixed_load.py.

The balancer (deploy/docker/load-balancer.conf.template) is kept in step with the replicas' readiness, as Kubernetes'
endpoints controller keeps a Service: a replica told to stop turns not-ready and is taken out of rotation while it
drains; a restarted one comes back once ready.
  * The same image rolled, with the balancer's retry: every answer right, and nothing lost. The clients keep
    connections to the balancer open and retry a call once when it failed in a way a careful client retries
    (inference is idempotent): each reload of the balancer closes its idle client connections, and a request sent
    on one at that moment fails (the keep-alive race, moved to the balancer); the count is printed.
  * A new model version rolled (an image with digits_v2.mar): every answer is right for exactly one version (the one
    a v2 answer names); before the rollout 1.0 only, after it 2.0 only.
  * `make rolling` (ROLLING_FULL=1) also runs the balancer without its retry, and with passive checks only (no one
    watches readiness): what each costs is printed.

Each test prints the calls by kind and outcome, the failures by cause, p50/p99 latency before and during the
rollout, how long each replica was out (from `docker stop` until it answered ready again) and when the balancer took
it out of rotation and back.
"""
from __future__ import annotations

import os
import secrets
import time

import numpy as np
import pytest

from tests.support.gateways import new_credential
from tests.support.mixed_load import KINDS, TRANSIENT, Credentials, Traffic, rest_answers
from tests.support.replicas import LoadBalancer, Replica, Rollout, replica_ports

FULL = os.environ.get("ROLLING_FULL", "") == "1"
IMAGES = 24
BASELINE = 5.0  # seconds of load before the rollout
# retry: readiness-driven rotation + the balancer's retry; none: readiness-driven rotation, no retry; passive: the
# balancer's retry and passive checks only (no one watches readiness), clients retrying once.
SETTINGS = ["retry", "none", "passive"] if FULL else ["retry"]


@pytest.fixture(scope="module")
def replicas(docker_session, image, workdir_factory):
    """Replicas A and B of the image, on their own ports, one client credential file for both; removed after."""
    from tests.support.system import NGINX, ensure_packages

    ensure_packages(NGINX)
    workdir = workdir_factory()
    credential = new_credential()
    credential_file = workdir / "client-token"
    credential_file.write_text(credential + "\n")
    credential_file.chmod(0o644)  # the container's user reads it
    ports = replica_ports(3)
    pair = [Replica("A", ports[0], image), Replica("B", ports[1], image)]
    # Behind the balancer every client has the balancer's address: lift the per-address limit.
    rollout = Rollout(docker_session, pair, credential_file, {"RATE_LIMIT": "100000", "RATE_BURST": "100000"})
    rollout.spare_ports, rollout.credential = ports[2], credential
    try:
        for replica in pair:
            replica.run(docker_session, image, credential_file, rollout.env)
        yield rollout
    finally:
        for replica in pair:
            if replica.name:
                docker_session.remove_container(replica.name)


def settle(traffic: Traffic, moment: float, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(traffic.answered_ok(kind, moment) for kind in KINDS):
        assert time.monotonic() < deadline, f"not every kind of client answered since {moment}: {traffic.counts()}"
        time.sleep(0.1)


def roll_under_load(rollout, balancer: LoadBalancer, images, answers: dict, image: str):
    """Steady mixed load through the balancer from clients that retry once: every kind answered, BASELINE seconds of
    it (the latency the rollout's is compared with), the replicas rolled to `image` one at a time, every kind
    answered again. Returns the traffic, each replica's outage, and when the rollout began and ended."""
    traffic = Traffic(balancer, Credentials(rollout.credential), images, answers, retry=True).start()
    try:
        settle(traffic, time.time())
        time.sleep(BASELINE)
        began = time.time()
        outages = rollout.roll(image)
        ended = time.time()
        settle(traffic, ended)
        time.sleep(1)
    finally:
        traffic.finish()
    return traffic, outages, began, ended


def percentiles(calls) -> str:
    latencies = np.array([call.answered - call.sent for call in calls]) * 1000
    if len(latencies) == 0:
        return "no calls"
    return f"p50 {np.percentile(latencies, 50):.1f} ms, p99 {np.percentile(latencies, 99):.1f} ms ({len(latencies)} calls)"


def report(title: str, traffic: Traffic, outages, began: float, ended: float, balancer: LoadBalancer) -> None:
    counts = traffic.counts()
    print(f"\n{title}: {sum(sum(counter.values()) for counter in counts.values())} calls")
    for kind, counter in counts.items():
        print(f"  {kind:<9} " + ", ".join(f"{outcome}: {count}" for outcome, count in counter.most_common()))
    failures = traffic.failures()
    if failures:
        recovered = sum(call.retried == "ok" for call in failures)
        print(f"  failed: {len(failures)}; the client's retry recovered {recovered}")
    before = [call for call in traffic.calls if call.sent < began]
    print(f"  latency before the rollout: {percentiles(before)}")
    print(f"  latency during the rollout: {percentiles(traffic.between(began, ended))}")
    for outage in outages:
        print(f"  replica {outage.replica} out {outage.seconds_out:.1f} s (stop {outage.exited - outage.stopped:.1f} s,"
              f" start to ready {outage.ready - outage.exited:.1f} s)")
    changes = ", ".join(f"{label} {'in' if ready else 'out'} at {stamp - began:+.1f} s"
                        for stamp, label, ready in balancer.changes)
    print(f"  the balancer's rotation (from the rollout's start): {changes}")
    for call in failures[:5]:
        print(f"  failure sent {call.sent - began:+.2f} s after the rollout began: {call.kind} {call.outcome[:150]}")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("setting", SETTINGS)
def test_a_rolling_restart_under_mixed_load(replicas, test_split, setting):
    """Every answer right; what failed was transient and the client's one retry got the right answer (nothing lost);
    with the balancer following readiness, failures only from its reloads (the keep-alive race); passive (make
    rolling only): only gRPC fails (see below)."""
    rollout = replicas
    balancer = LoadBalancer.start(rollout.replicas, rollout.credential, "none" if setting == "none" else "retry",
                                  watch=setting != "passive")
    try:
        images = test_split[0][:IMAGES]
        answers = {"1.0": rest_answers(balancer, rollout.credential, images)}
        traffic, outages, began, ended = roll_under_load(rollout, balancer, images, answers,
                                                         rollout.replicas[0].image)
    finally:
        balancer.stop()
    report(f"rolling restart, balancer setting {setting!r}", traffic, outages, began, ended, balancer)

    failures = traffic.failures()
    assert not [call for call in failures if call.outcome.startswith("wrong answer")], failures[:5]
    # Nothing is lost: whatever failed was a transient failure, and the client's one retry was answered right.
    assert all(call.outcome.startswith(TRANSIENT) and call.retried == "ok" for call in failures), failures[:10]
    if setting == "passive":
        # What readiness-driven rotation is for: a restarted replica is in rotation before it is ready, and its gRPC
        # port answers 502 while its TorchServe starts, which the balancer cannot retry (a gRPC body is streamed).
        assert not [call for call in failures if call.kind != "grpc"], failures[:10]
    else:
        # Each reload of the balancer (a replica out, a replica in) closes its idle client connections: a client
        # that sends on one at that moment sees it closed (the keep-alive race), at most once per client per reload.
        assert len(failures) <= len(KINDS) * len(balancer.changes), (failures[:10], balancer.changes)
    assert all(outage.seconds_out < 60 for outage in outages), outages
    assert all(counter["ok"] > 20 for counter in traffic.counts().values()), traffic.counts()


@pytest.mark.timeout(900)
def test_a_new_version_rolled_out_under_load_answers_from_one_version_each(replicas, docker_session, model_store,
                                                                          artifacts_v2, test_split):
    rollout = replicas
    images = test_split[0][:IMAGES]
    v1_image = rollout.replicas[0].image
    v2_image = docker_session.build(model_store / "digits_v2.mar", artifacts_v2 / "samples",
                                    f"digits-serve:test-v2-{secrets.token_hex(4)}")
    # Version 2.0's answers, from a replica of its own before the rollout.
    probe = Replica("C", rollout.spare_ports, v2_image)
    probe.run(docker_session, v2_image, rollout.credential_file, rollout.env)
    try:
        answers_v2 = rest_answers(probe, rollout.credential, images)
    finally:
        probe.stop(docker_session)
    balancer = LoadBalancer.start(rollout.replicas, rollout.credential, "retry")
    try:
        answers = {"1.0": rest_answers(balancer, rollout.credential, images), "2.0": answers_v2}
        assert answers["1.0"] != answers["2.0"]  # the versions' answers tell them apart
        traffic, outages, began, ended = roll_under_load(rollout, balancer, images, answers, v2_image)
    finally:
        balancer.stop()
    report(f"rollout {v1_image} -> {v2_image}", traffic, outages, began, ended, balancer)

    failures = traffic.failures()
    assert all(call.outcome.startswith(TRANSIENT) and call.retried == "ok" for call in failures), failures[:10]
    assert len(failures) <= len(KINDS) * len(balancer.changes), (failures[:10], balancer.changes)
    answered = [call for call in traffic.calls if call.kind != "rest-bad" and "ok" in (call.outcome, call.retried)]
    assert all(call.version in ("1.0", "2.0") for call in answered)
    by_version = {version: sum(call.version == version for call in answered) for version in ("1.0", "2.0")}
    during = {version: sum(call.version == version for call in traffic.between(began, ended)) for version in by_version}
    print(f"  answers by version: {by_version}; during the rollout: {during}")
    assert [call for call in answered if call.sent < began and call.version != "1.0"] == []
    assert [call for call in answered if call.sent > ended and call.version != "2.0"] == []
    assert during["1.0"] > 0 and during["2.0"] > 0  # both served during the rollout, each answer from one
