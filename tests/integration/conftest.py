"""Fixtures for the integration tests: fresh .mar files and a real TorchServe (serving.launch) on its
own ports, with its own temp dir, token auth on."""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from serving import launch
from serving.archive import package
from serving.processes import pid_alive
from tests.support import ROOT
from tests.support.archives import BATCH_MODEL, BATCH_MODEL_CONFIG
from tests.support.images import png_bytes

@pytest.fixture(scope="session")
def artifacts_v2(tmp_path_factory) -> Path:
    """A second model for version 2.0: another seed, fewer epochs (seconds), so its answers differ from 1.0's."""
    out = tmp_path_factory.mktemp("artifacts_v2")
    subprocess.run([sys.executable, str(ROOT / "train.py"), "--seed", "2", "--epochs", "8", "--output-dir", str(out)],
                   check=True, cwd=ROOT, capture_output=True)
    return out


@pytest.fixture(scope="session")
def model_store(artifacts, artifacts_v2, tmp_path_factory) -> Path:
    """digits.mar as scripts/package.sh builds it (shipped model-config), digits-latency.mar (the model for lone
    requests: --latency), digits_v2.mar (model digits, version 2.0), and the batching test model."""
    store = tmp_path_factory.mktemp("model_store")
    package(artifacts, store, "digits")
    package(artifacts, store, "digits-latency", latency=True)
    package(artifacts_v2, store, "digits", version="2.0", archive_name="digits_v2")
    config = tmp_path_factory.mktemp("config") / "batch-model-config.yaml"
    config.write_text(BATCH_MODEL_CONFIG)
    package(artifacts, store, BATCH_MODEL, config)
    return store


@pytest.fixture(scope="session")
def workdir_factory():
    """Short paths under /tmp: worker sockets live in TMPDIR and a Unix socket path has ~100 bytes."""
    made = []

    def make() -> Path:
        path = Path(tempfile.mkdtemp(prefix="ts-test-"))
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_session():
    """Docker (installed and started when missing), made ready in the background since collection (the slow image
    stages included); what the session builds and runs in it is removed after."""
    from tests.support import containers

    session = containers.prepare_in_background().result()
    yield session
    problems = containers.finish_preparation()
    assert not problems, f"left behind: {problems}"


@pytest.fixture(scope="session")
def image(docker_session, model_store, artifacts):
    """The image, built by deploy/docker/build.sh from the Dockerfile, the freshly packaged digits.mar and the held-out
    samples of the training run that made it."""
    return docker_session.build(model_store / "digits.mar", artifacts / "samples",
                                f"digits-serve:test-{secrets.token_hex(4)}")


@pytest.fixture(scope="session")
def container_gateway(docker_session, image, workdir_factory, test_split):
    """The image running: TorchServe's keys last half a minute (rotated every 15 s), an access log on stdout (the
    drain test reads it), the gateway's default rate limit, and REST + gRPC traffic from the start on, which the
    rotation test judges (its clients, and the drain test's, have client addresses of their own)."""
    from tests.support.containers import ROTATION_MINUTES, ContainerGateway, Traffic

    gateway = ContainerGateway.run(docker_session, image, workdir_factory(),
                                   env={"TOKEN_EXPIRATION_MIN": str(ROTATION_MINUTES), "ACCESS_LOG": "stdout"})
    gateway.first_inference_key = json.loads(gateway.exec("cat", "/tmp/digits/key_file.json"))["inference"]["key"]
    gateway.traffic = Traffic(gateway, png_bytes(test_split[0][0]), str(test_split[1][0])).start()
    yield gateway
    gateway.traffic.finish()


@pytest.fixture(scope="session", params=["host", "container"])
def gateway(request, model_store, workdir_factory):
    """The gateway in front of TorchServe with the fresh digits.mar: python -m gateway on this machine, or the image."""
    from tests.support.gateways import HostGateway
    from tests.support.system import NGINX, ensure_packages

    if request.param == "container":
        yield request.getfixturevalue("container_gateway")
        return
    ensure_packages(NGINX)
    gateway = HostGateway.start(model_store, workdir_factory(), "--load-models", "digits.mar")
    yield gateway
    status, alive = gateway.stop()
    assert status == 0, f"the gateway exited {status} on SIGTERM:\n{gateway.log_tail()}"
    assert not alive, f"processes left behind by the gateway: {alive}"
    from gateway.render import nginx_temp_dir

    temp = nginx_temp_dir(gateway.workdir / "state")
    assert temp.parent == gateway.workdir / "state" or not temp.exists(), f"{temp} left behind"


@pytest.fixture(scope="session")
def server(model_store, workdir_factory):
    server = launch.start(model_store, workdir_factory(), f"digits.mar,{BATCH_MODEL}.mar")
    yield server
    pids = server.stop()
    assert not server.killed, f"torchserve --stop left {server.killed} running: they needed SIGKILL"
    alive = [pid for pid in pids if pid_alive(pid)]
    assert not alive, f"TorchServe processes left behind: {alive}"
