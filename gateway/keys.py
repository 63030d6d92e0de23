"""TorchServe's keys as the gateway uses them: nginx holds the inference key (set over its admin socket), and the keys
are rotated at half their lifetime, new requests held for the moment of the swap so that none is refused
(gateway.lua explains the hold)."""
from __future__ import annotations

import http.client
import logging
import socket
import time
from pathlib import Path

from serving.config import Endpoints
from serving.rest import http_json
from serving.tokens import key_expiry, read_new_key, read_token

log = logging.getLogger("gateway")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 5.0):
        super().__init__("localhost", timeout=timeout)
        self.path = str(path)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def admin(state: Path, method: str, what: str, body: str | None = None) -> str:
    connection = UnixHTTPConnection(state / "admin.sock")
    try:
        connection.request(method, f"/admin/{what}", body=body)
        response = connection.getresponse()
        text = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"admin {method} {what}: HTTP {response.status}")
        return text.strip()
    finally:
        connection.close()


def admin_answers(state: Path) -> bool:
    try:
        admin(state, "GET", "inflight")
        return True
    except OSError:
        return False


class Keys:
    """TorchServe's keys as the gateway uses them, and their rotation at half their lifetime."""

    def __init__(self, endpoints: Endpoints, state: Path):
        self.endpoints, self.state = endpoints, state
        self.next_rotation = 0.0

    def publish(self) -> None:
        """Give nginx the current inference key and plan the next rotation."""
        admin(self.state, "PUT", "key", read_token(self.endpoints.key_file, "inference"))
        self.plan()

    def plan(self) -> None:
        now = time.time()
        expiry = min(key_expiry(self.endpoints.key_file, kind) for kind in ("inference", "management"))
        self.next_rotation = time.monotonic() + max((expiry - now) / 2, 1.0)
        admin(self.state, "PUT", "expiry", f"{expiry:.3f}")  # digits_gateway_key_expiry_timestamp_seconds

    def due(self) -> bool:
        return time.monotonic() >= self.next_rotation

    def rotate(self, hold_limit: float = 2.0) -> None:
        api_key = read_token(self.endpoints.key_file, "API")
        # The management key: only this process uses it, between its own calls.
        old = read_token(self.endpoints.key_file, "management")
        self._rotate("management", api_key)
        read_new_key(self.endpoints.key_file, "management", old)
        # The inference key: hold new requests, let those in flight finish, swap, release (gateway.lua).
        old = read_token(self.endpoints.key_file, "inference")
        started = time.monotonic()
        admin(self.state, "PUT", "hold", "1")
        try:
            while int(admin(self.state, "GET", "inflight")) > 0 and time.monotonic() - started < hold_limit:
                time.sleep(0.002)
            self._rotate("inference", api_key)
            admin(self.state, "PUT", "key", read_new_key(self.endpoints.key_file, "inference", old))
        finally:
            admin(self.state, "PUT", "hold", "0")
        log.info("rotated TorchServe's keys (requests held %.0f ms)", 1000 * (time.monotonic() - started))
        self.plan()

    def _rotate(self, kind: str, api_key: str) -> None:
        status, body = http_json(f"{self.endpoints.management}/token?type={kind}", api_key, method="POST", data=b"")
        if status != 200:
            raise RuntimeError(f"TorchServe refused to rotate the {kind} key: HTTP {status} {body}")
