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
from serving.tokens import TokenFileError, key_expiry, read_new_key, read_token

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


RETRY_FIRST, RETRY_MAX = 5.0, 60.0  # seconds before trying a failed rotation again, doubling each time
ROTATION_ERRORS = (OSError, RuntimeError, TokenFileError, KeyError, ValueError)


class Keys:
    """TorchServe's keys as the gateway uses them, and their rotation at half their lifetime.

    A rotation that fails (TorchServe's management API unreachable or refusing, its key file unreadable) does not stop
    the gateway: the current keys stay valid until they expire, so nginx goes on with the inference key TorchServe's
    key file holds (resync), the failure is counted (digits_gateway_key_rotation_failures_total; the
    DigitsKeyRotationRetrying alert) and logged, and the rotation is tried again after RETRY_FIRST seconds,
    doubling to RETRY_MAX, and never later than a quarter of the time the keys have left."""

    def __init__(self, endpoints: Endpoints, state: Path):
        self.endpoints, self.state = endpoints, state
        self.next_rotation = 0.0
        self.published: str | None = None  # the inference key nginx holds
        self.failures = 0  # rotations failed in a row

    def publish(self) -> None:
        """Give nginx the current inference key and plan the next rotation."""
        self._give_nginx(read_token(self.endpoints.key_file, "inference"))
        self.plan()

    def _give_nginx(self, key: str) -> None:
        admin(self.state, "PUT", "key", key)
        self.published = key

    def resync(self) -> None:
        """nginx holds the inference key TorchServe's key file holds. They differ only when a key changed outside a
        completed rotation (a rotation call that failed after TorchServe acted on it, or someone else's call to its
        token API): then requests already fail with TorchServe's 401, and this ends it."""
        try:
            key = read_token(self.endpoints.key_file, "inference")
        except TokenFileError:
            return  # TorchServe is rewriting it (in place): the next look reads it whole
        if key != self.published:
            log.warning("TorchServe's inference key changed outside a rotation: nginx now uses the new one")
            self._give_nginx(key)

    def rotate_soon(self) -> None:
        """Rotate at the next look (SIGUSR1: an operator's "rotate the keys now")."""
        self.next_rotation = 0.0

    def rotate_when_due(self) -> None:
        if not self.due():
            return
        try:
            self.rotate()
            if self.failures:
                log.info("rotation succeeded after %d failed tries", self.failures)
            self.failures = 0
        except ROTATION_ERRORS as error:
            self.failures += 1
            left = self.seconds_left()
            delay = min(RETRY_FIRST * 2 ** (self.failures - 1), RETRY_MAX, max(left / 4, 1.0))
            self.next_rotation = time.monotonic() + delay
            log.error("rotating TorchServe's keys failed (%s): the current keys stay in use (they expire in %.0f s); "
                      "trying again in %.0f s", error, left, delay)
            try:
                admin(self.state, "PUT", "rotationfailed", "1")
                self.resync()
            except OSError as admin_error:
                log.error("nginx's admin socket: %s", admin_error)

    def seconds_left(self) -> float:
        try:
            return min(key_expiry(self.endpoints.key_file, kind) for kind in ("inference", "management")) - time.time()
        except (OSError, TokenFileError, KeyError, ValueError):
            return 0.0

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
            self._give_nginx(read_new_key(self.endpoints.key_file, "inference", old))
        finally:
            admin(self.state, "PUT", "hold", "0")
        log.info("rotated TorchServe's keys (requests held %.0f ms)", 1000 * (time.monotonic() - started))
        self.plan()

    def _rotate(self, kind: str, api_key: str) -> None:
        status, body = http_json(f"{self.endpoints.management}/token?type={kind}", api_key, method="POST", data=b"")
        if status != 200:
            raise RuntimeError(f"TorchServe refused to rotate the {kind} key: HTTP {status} {body}")
