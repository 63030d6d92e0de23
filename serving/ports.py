"""Free TCP ports on loopback for a server of our own, and what to do when one is taken before the server binds it."""
from __future__ import annotations

import logging
import random
import socket
from pathlib import Path

log = logging.getLogger(__name__)

# Listeners get ports below the kernel's ephemeral range: an outgoing connection (thousands of them in a load test)
# takes its local port from that range, and could take a port between our check and the server's bind.
PORT_FLOOR = 10000


class PortClash(RuntimeError):
    """A server could not bind a port that was free when it was picked (another process took it in between)."""


def port_taken(log_text: str) -> bool:
    """Whether a log says a port was taken: Java, nginx and Python write "Address already in use", Go (Prometheus)
    "address already in use"."""
    return "address already in use" in log_text.lower()


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def free_ports(count: int, consecutive: bool = False) -> list[int]:
    """`count` TCP ports free on 127.0.0.1 now, picked at random below the ephemeral range and checked by binding
    each; `consecutive`: a block port..port+count-1 (the gateway's TorchServe listens on base..base+4).

    A picked port can still be taken before the server binds it: starters retry on PortClash (`retry_port_clash`).
    """
    ceiling = ephemeral_range()[0]
    if ceiling - PORT_FLOOR < 10 * count:  # an odd kernel setting: let the kernel choose (ephemeral) ports
        sockets = [socket.socket() for _ in range(count)]
        try:
            for sock in sockets:
                sock.bind(("127.0.0.1", 0))
            return [sock.getsockname()[1] for sock in sockets]
        finally:
            for sock in sockets:
                sock.close()
    chosen: list[int] = []
    for _ in range(1000):
        if consecutive:
            base = random.randrange(PORT_FLOOR, ceiling - count)
            block = list(range(base, base + count))
            if all(port_is_free(port) for port in block):
                return block
        else:
            port = random.randrange(PORT_FLOOR, ceiling)
            if port not in chosen and port_is_free(port):
                chosen.append(port)
                if len(chosen) == count:
                    return chosen
    raise RuntimeError(f"no {count} free ports between {PORT_FLOOR} and {ceiling} on 127.0.0.1")


def retry_port_clash(start, attempts: int = 3):
    """start() (which picks its own free ports), again with new ports when a port was taken under it."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except PortClash as clash:
            if attempt == attempts:
                raise
            log.warning("a port was taken before the server bound it (%s): trying other ports", str(clash)[:200])
