"""The gateway for tests: the library's (serving/gateways.py: started on free loopback ports, stopped by its pid), and
what only tests need of it: clients from other loopback addresses, the gateway's settings parsed."""
from __future__ import annotations

from pathlib import Path

import requests
import requests.adapters

from serving.gateways import (Gateway, HostGateway, gateway_ports, new_credential, start_failed,  # noqa: F401
                              wait_until_ready)


class SourceAddressAdapter(requests.adapters.HTTPAdapter):
    """Connections from a given local address: 127.0.0.2, 127.0.0.3, ... are other clients to the gateway's
    per-address rate limit (all of 127.0.0.0/8 is this machine's loopback)."""

    def __init__(self, source: str, **kwargs):
        self.source = source
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def client_session(source: str) -> requests.Session:
    """A session whose connections come from `source`. It does not read proxy settings from the environment:
    requests would walk os.environ on every call, and a client thread that outlives one test (the container's
    traffic) died there with KeyError 'PYTEST_CURRENT_TEST' when pytest removed that variable at the same moment
    (CI, once). Every address here is loopback: no proxy applies."""
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", SourceAddressAdapter(source))
    return session


def gateway_args(tmp_path: Path, *argv: str):
    """The gateway's settings as its command line parses them, its state under tmp_path."""
    from gateway.settings import build_parser

    return build_parser().parse_args(["--state-dir", str(tmp_path / "state"), *argv])


def scrape(gateway: Gateway) -> dict[str, float]:
    """The metrics port's samples, {'name{labels}': value} (Prometheus text format)."""
    samples = {}
    for line in requests.get(gateway.metrics, timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
