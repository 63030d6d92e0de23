"""A TorchServe whose port is taken between free_ports' check and its bind (the race no check can close) is
started again by serving.launch on other ports: made to happen here with a real server."""
from __future__ import annotations

import socket

import pytest

from serving import launch
from serving.management import api_for
from serving.ports import free_ports

pytestmark = pytest.mark.integration


def test_torchserve_whose_port_was_taken_starts_again_on_others(model_store, workdir_factory, monkeypatch):
    """The race free_ports cannot close, made to happen: the first ports handed out include one another process
    holds. TorchServe cannot bind it, the launcher reads that in its log and starts it on new ports."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", free_ports(1)[0]))
    squatter.listen()
    taken = squatter.getsockname()[1]
    handed_out = []

    def ports_with_one_taken(count: int, consecutive: bool = False) -> list[int]:
        ports = free_ports(count, consecutive)
        if not handed_out:
            ports[1] = taken  # the management port, bound before the inference port's workers matter
        handed_out.append(ports)
        return ports

    monkeypatch.setattr(launch, "free_ports", ports_with_one_taken)
    try:
        server = launch.start(model_store, workdir_factory(), "digits.mar")
    finally:
        squatter.close()
    try:
        assert len(handed_out) == 2 and taken not in server.ports(), handed_out
        assert api_for(server.endpoints).describe("digits")[0]["workers"][0]["status"] == "READY"
    finally:
        server.stop()
    assert not server.killed
