"""serving/ports.py: ports picked free and outside the kernel's ephemeral range, and a server started again on other
ports when one was taken under it."""
from __future__ import annotations

import socket

import pytest

from serving.ports import (PORT_FLOOR, PortClash, ephemeral_range, free_ports, port_is_free, port_taken,
                           retry_port_clash)


def test_free_ports_are_bindable_distinct_and_below_the_ephemeral_range():
    low, _ = ephemeral_range()
    ports = free_ports(20)
    assert len(set(ports)) == 20 and all(PORT_FLOOR <= port < low for port in ports)
    for port in ports:
        assert port_is_free(port)


def test_a_consecutive_block_is_free_as_a_whole():
    base = free_ports(5, consecutive=True)
    assert base == list(range(base[0], base[0] + 5)) and all(port_is_free(port) for port in base)


def test_a_taken_port_is_not_free():
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_ports(1)[0]))
        held.listen()
        assert not port_is_free(held.getsockname()[1])


def test_retry_starts_again_on_a_clash_and_gives_up_after_the_attempts():
    attempts = []

    def start():
        attempts.append(1)
        if len(attempts) < 3:
            raise PortClash("bind failed: Address already in use")
        return "started"

    assert retry_port_clash(start, attempts=3) == "started" and len(attempts) == 3
    attempts.clear()
    with pytest.raises(PortClash):
        retry_port_clash(start, attempts=2)
    with pytest.raises(RuntimeError, match="not a port"):  # any other failure is not retried
        retry_port_clash(lambda: (_ for _ in ()).throw(RuntimeError("not a port")))


@pytest.mark.parametrize("log_line", ["java.net.BindException: Address already in use",
                                      "bind() to 127.0.0.1:8080 failed (98: Address already in use)",
                                      "listen tcp 127.0.0.1:9090: bind: address already in use"])
def test_port_taken_reads_java_nginx_and_go(log_line):
    assert port_taken(f"starting\n{log_line}\nexiting") and not port_taken("started")
