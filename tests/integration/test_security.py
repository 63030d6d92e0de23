"""Secure defaults against a real TorchServe (issue #5 grows this file)."""
from __future__ import annotations

import zipfile

import pytest

from scripts.local_server import start_server

pytestmark = pytest.mark.integration


def test_an_archive_with_tampered_weights_never_serves(model_store, workdir_factory, tmp_path):
    """Weights changed after packaging: every worker refuses them before torch.load and says why."""
    store = tmp_path / "store"
    store.mkdir()
    with zipfile.ZipFile(model_store / "digits.mar") as original, \
            zipfile.ZipFile(store / "digits.mar", "w", zipfile.ZIP_STORED) as tampered:
        for item in original.infolist():
            data = original.read(item)
            if item.filename == "digit_cnn.pt":
                data = data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:]
            tampered.writestr(item, data)
    with pytest.raises(RuntimeError) as refused:
        start_server(store, workdir_factory(), "digits.mar", timeout=25)
    message = str(refused.value)
    assert "did not become ready" in message
    assert "refusing to load digit_cnn.pt: SHA-256" in message and "tampered or corrupted weights" in message


def test_a_killed_worker_is_replaced_and_only_its_requests_fail(model_store, workdir_factory, test_split):
    """kill -9 one worker under load: TorchServe starts a new one; /ping and predictions recover within a
    bounded time; only the requests that worker held may fail, and each gets an answer (no hang)."""
    import os
    import signal
    import threading
    import time

    import requests

    from tests.conftest import png_bytes

    server = start_server(model_store, workdir_factory(), "digits.mar")
    outcomes: list[tuple[float, object, float]] = []  # (start, status or error, seconds)
    stop = threading.Event()
    data = png_bytes(test_split[0][0])

    def load():
        with requests.Session() as session:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    response = session.post(f"{server.endpoints.inference}/predictions/digits", data=data,
                                            headers={**server.auth(), "Content-Type": "application/octet-stream"},
                                            timeout=40)  # > responseTimeout (30 s): a hang would show
                    outcome = response.status_code
                except requests.RequestException as error:
                    outcome = type(error).__name__
                outcomes.append((started, outcome, time.monotonic() - started))

    threads = [threading.Thread(target=load) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        victim = server.worker_pids("digits")[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        recovered_at = None
        while time.monotonic() - killed_at < 60:
            workers = server.describe("digits")[0]["workers"]
            pids = {int(worker["pid"]) for worker in workers if worker["status"] == "READY"}
            if len(pids) == 2 and victim not in pids:
                recovered_at = time.monotonic()
                break
            time.sleep(0.2)
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        pids = server.stop()
    assert recovered_at is not None, "no replacement worker within 60 s"
    recovery = recovered_at - killed_at
    print(f"worker replaced {recovery:.1f} s after kill -9")
    assert recovery < 30
    after = [outcome for started, outcome, _ in outcomes if started > recovered_at]
    assert after and set(after) == {200}
    failures = [(round(started - killed_at, 2), outcome, round(seconds, 1))
                for started, outcome, seconds in outcomes if outcome != 200]
    assert len(failures) <= 4, failures  # at most the requests in flight (4 clients)
    assert all(isinstance(outcome, int) and outcome >= 500 and seconds < 31 for _, outcome, seconds in failures), failures
    import psutil

    assert not [pid for pid in pids if psutil.pid_exists(pid)]
