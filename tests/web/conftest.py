"""Fixtures for the web page's tests: the gateway on loopback with no client credential (what `make web` runs) in
front of a real TorchServe with the freshly trained model, and a headless Chromium."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from serving.archive import package
from tests.support.system import NGINX, ensure_packages


@pytest.fixture(scope="module")
def open_gateway(artifacts, tmp_path_factory):
    """python -m gateway --no-client-credential on 127.0.0.1: TorchServe, nginx, the page at /. For the module that
    uses it only: an idle TorchServe would compete for the two cores with the tests after it."""
    from tests.support.gateways import HostGateway

    ensure_packages(NGINX)
    store = tmp_path_factory.mktemp("web_model_store")
    package(artifacts, store, "digits")
    workdir = Path(tempfile.mkdtemp(prefix="ts-web-"))  # short: TorchServe's worker sockets live under it
    gateway = HostGateway.start(store, workdir, "--load-models", "digits.mar", "--no-client-credential",
                                "--drain-seconds", "0")
    yield gateway
    status, alive = gateway.stop()
    assert status == 0, f"the gateway exited {status} on SIGTERM:\n{gateway.log_tail()}"
    assert not alive, f"processes left behind by the gateway: {alive}"
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    from tests.support.browser import browser_session

    yield from browser_session()
