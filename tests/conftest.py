"""Shared fixtures and the session's hooks: a model trained once per session with train.py's default flags (or
$DIGITS_TEST_MODEL_DIR), image helpers, a time limit for every test, and heavy prerequisites (Debian's packages,
Docker and the image's slow stages) prepared in the background from collection on."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support import ROOT, system


# Another trained model for the whole suite: a directory train.py wrote (with the default split, seed 0). Every
# test that depends on the weights must pass with any model train.py can produce on any CPU; this is how a run
# checks one made elsewhere (another seed or thread count, another machine) instead of training its own.
MODEL_DIR_VARIABLE = "DIGITS_TEST_MODEL_DIR"


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    """train.py run once with its default flags (real training on 3,500 real MNIST digits, ~30 s on 2 cores), or
    a copy of $DIGITS_TEST_MODEL_DIR."""
    out = tmp_path_factory.mktemp("artifacts")
    given = os.environ.get(MODEL_DIR_VARIABLE)
    if given:
        shutil.copytree(given, out, dirs_exist_ok=True)
        return out
    subprocess.run([sys.executable, str(ROOT / "train.py"), "--output-dir", str(out)], check=True, cwd=ROOT)
    return out


@pytest.fixture(scope="session")
def metrics(artifacts) -> dict:
    return json.loads((artifacts / "metrics.json").read_text())


@pytest.fixture(scope="session")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    """The default run's held-out test split: real MNIST digits as 28x28 8-bit images (white on black), labels."""
    from data import default_test_split

    return default_test_split()


# ---------------------------------------------------------------- per-test time limits

# Seconds a test function may run (pytest-timeout, fixtures excluded: they bound their own waits). About ten times
# the slowest test of each kind on a busy 2-core machine; a test that needs longer says so with its own marker.
TIMEOUTS = {"unit": 120, "integration": 300}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            kind = "integration" if item.get_closest_marker("integration") else "unit"
            item.add_marker(pytest.mark.timeout(TIMEOUTS[kind]))


# ---------------------------------------------------------------- heavy prerequisites, prepared from collection on

# What these fixtures need from Debian's packages (a test module without such a fixture names its own in PACKAGES).
FIXTURE_PACKAGES = {"gateway": system.NGINX, "open_gateway": system.NGINX, "bundle": system.NGINX,
                    "prometheus": system.PROMETHEUS, "browser": system.CHROMIUM}
DOCKER_FIXTURES = {"docker_session", "image", "container_gateway"}


def uses_docker(item) -> bool:
    names = set(getattr(item, "fixturenames", ()))
    params = getattr(getattr(item, "callspec", None), "params", {})
    return bool(names & DOCKER_FIXTURES) or params.get("gateway") == "container"


def pytest_collection_finish(session):
    """Install what the collected tests need in one apt-get run, and make Docker ready (the image's slow stages
    built), in the background while the first tests run."""
    if session.config.option.collectonly:
        return
    needs: dict[str, str] = {}
    docker = False
    for item in session.items:
        needs.update(getattr(item.module, "PACKAGES", {}) if getattr(item, "module", None) else {})
        for name in set(getattr(item, "fixturenames", ())) & FIXTURE_PACKAGES.keys():
            needs.update(FIXTURE_PACKAGES[name])
        docker = docker or uses_docker(item)
    if docker:
        needs.update(system.DOCKER)
    system.install_in_background(needs)
    if docker:
        from tests.support import containers

        containers.prepare_in_background()


def pytest_sessionfinish(session):
    """A run stopped before the container tests (-x, Ctrl-C) still stops the Docker it prepared."""
    containers = sys.modules.get("tests.support.containers")
    if containers is not None and containers.finish_preparation():
        session.config.get_terminal_writer().line("docker: some of the session's containers or images remain")
