"""Run the bundle behind its gateway: TorchServe (token auth on, 127.0.0.1 only) and nginx in front, supervised.

    python gateway/run.py                     # in the container (the image's entrypoint, under tini)
    DIGITS_CLIENT_TOKEN=... python gateway/run.py --state-dir /tmp/digits-gw   # on the host
    python gateway/run.py --address 127.0.0.1 --no-client-credential ...      # make web: this machine only

What it does:
  * reads the client credential(s) (DIGITS_CLIENT_TOKEN_FILE, one per line, or DIGITS_CLIENT_TOKEN) and refuses
    to start without one; clients send "Authorization: Bearer <credential>" to the gateway. With
    --no-client-credential it asks clients for none, and then only listens on a loopback address: only programs
    on this machine reach it (a developer's own web page, `make web`), never the network;
  * serves the web page (web/) at / on the REST port, same-origin with the API it calls;
  * starts TorchServe in the foreground on internal loopback ports, then nginx (gateway/nginx.conf.template);
  * hands nginx TorchServe's inference key and rotates TorchServe's keys at half their lifetime, holding new
    requests for the moment of the swap so that none is refused (gateway.lua explains the hold);
  * exits non-zero as soon as TorchServe or nginx dies (the other is stopped first), so an orchestrator restarts
    the whole unit;
  * on SIGTERM or SIGINT drains: readiness turns 503, DRAIN_SECONDS later nginx stops accepting connections and
    finishes the requests it has, then TorchServe stops. Exit status 0.

Every setting has an environment variable (the container's interface) and a flag; --help lists the defaults.
"""
from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
from scripts.serving import Endpoints, TokenFileError, http_json, read_token, wait_until_ready  # noqa: E402

log = logging.getLogger("gateway")

MIN_CREDENTIAL_LENGTH = 16  # a shorter shared secret is guessable; openssl rand -hex 32 gives 64 characters
CREDENTIAL_PATTERN = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII without spaces: it travels in a header
EXIT_CHILD_DIED = 1
EXIT_BAD_CONFIG = 2


@dataclass
class Children:
    torchserve: subprocess.Popen | None = None
    nginx: subprocess.Popen | None = None


class Stop(Exception):
    """SIGTERM or SIGINT arrived: drain and exit 0."""


# ---------------------------------------------------------------- configuration


def env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add = parser.add_argument
    add("--state-dir", type=Path, default=Path(env("STATE_DIR", "/tmp/digits")),
        help="private runtime directory: configs, TorchServe's key file, sockets, logs (env STATE_DIR)")
    add("--model-store", type=Path, default=Path(env("MODEL_STORE", str(ROOT / "model_store"))),
        help="directory with the .mar archives (env MODEL_STORE)")
    add("--load-models", default=env("LOAD_MODELS", "digits.mar"), help="archives to load (env LOAD_MODELS)")
    add("--model", default=env("MODEL_NAME", "digits"), help="the model readiness waits for (env MODEL_NAME)")
    add("--address", default=env("GATEWAY_ADDRESS", "0.0.0.0"), help="gateway listen address (env GATEWAY_ADDRESS)")
    add("--port", type=int, default=int(env("GATEWAY_PORT", "8080")), help="REST + health (env GATEWAY_PORT)")
    add("--grpc-port", type=int, default=int(env("GATEWAY_GRPC_PORT", "7070")), help="gRPC (env GATEWAY_GRPC_PORT)")
    add("--metrics-address", default=env("METRICS_ADDRESS", "0.0.0.0"), help="env METRICS_ADDRESS")
    add("--metrics-port", type=int, default=int(env("METRICS_PORT", "8082")), help="Prometheus (env METRICS_PORT)")
    add("--internal-port-base", type=int, default=int(env("INTERNAL_PORT_BASE", "18080")),
        help="TorchServe on 127.0.0.1: REST base, management +1, metrics +2, gRPC +3/+4 (env INTERNAL_PORT_BASE)")
    add("--credential-file", type=Path, default=Path(env("DIGITS_CLIENT_TOKEN_FILE", "/run/secrets/digits/token")),
        help="client credentials, one per line (env DIGITS_CLIENT_TOKEN_FILE; DIGITS_CLIENT_TOKEN instead)")
    add("--no-client-credential", action="store_true",
        default=env("NO_CLIENT_CREDENTIAL", "") in ("1", "true", "yes"),
        help="ask clients for no credential; allowed only with a loopback --address and --metrics-address "
             "(env NO_CLIENT_CREDENTIAL=1)")
    add("--web-dir", type=Path, default=Path(env("WEB_DIR", str(ROOT / "web"))),
        help="the web page's files, served at / (env WEB_DIR)")
    add("--rate-limit", type=int, default=int(env("RATE_LIMIT", "200")),
        help="requests/s per client address before 429 (env RATE_LIMIT)")
    add("--rate-burst", type=int, default=int(env("RATE_BURST", "400")), help="burst above the rate (env RATE_BURST)")
    add("--drain-seconds", type=float, default=float(env("DRAIN_SECONDS", "5")),
        help="readiness is 503 this long after SIGTERM before the gateway closes its listeners (env DRAIN_SECONDS)")
    add("--workers", type=int, default=int(env("DIGITS_WORKERS", "0")),
        help="TorchServe workers for the model; 0: the archive's own minWorkers (env DIGITS_WORKERS)")
    add("--token-expiration-min", type=float, default=float(env("TOKEN_EXPIRATION_MIN", "0")),
        help="lifetime of TorchServe's keys, rotated at half of it; 0: config.properties' (env TOKEN_EXPIRATION_MIN)")
    add("--nginx-workers", type=int, default=int(env("NGINX_WORKERS", "1")), help="env NGINX_WORKERS")
    add("--access-log", choices=("off", "stdout"), default=env("ACCESS_LOG", "off"),
        help="one line per request on stdout (env ACCESS_LOG); off: per-request logging costs throughput")
    add("--config", type=Path, default=ROOT / "config.properties", help="TorchServe's config.properties")
    add("--start-timeout", type=float, default=float(env("START_TIMEOUT", "300")),
        help="seconds for TorchServe to get the model ready (env START_TIMEOUT)")
    return parser


def is_loopback(address: str) -> bool:
    """True for an IP literal on the loopback network (127.0.0.0/8, ::1). A host name is not trusted: it resolves
    to whatever the resolver says."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_no_credential_mode(args) -> None:
    """--no-client-credential: clients then reach the model with no secret at all, so the gateway must be reachable
    from this machine only. A loopback listener is: packets to 127.0.0.0/8 never leave the host, and a remote
    machine cannot address it."""
    for flag, address in (("--address", args.address), ("--metrics-address", args.metrics_address)):
        if not is_loopback(address):
            raise SystemExit(f"gateway: --no-client-credential serves anyone who reaches the gateway, so it listens "
                             f"on a loopback address only (127.0.0.1 or ::1); {flag} is {address}. Use "
                             f"{flag} 127.0.0.1, or give clients a credential (DIGITS_CLIENT_TOKEN)")


def read_credentials(args) -> list[str]:
    """The client credentials: the file (a mounted secret) if it exists, else DIGITS_CLIENT_TOKEN. None with
    --no-client-credential (on loopback only)."""
    if args.no_client_credential:
        check_no_credential_mode(args)
        return []
    if args.credential_file.is_file():
        lines = args.credential_file.read_text().splitlines()
        source = str(args.credential_file)
    elif os.environ.get("DIGITS_CLIENT_TOKEN"):
        lines = [os.environ["DIGITS_CLIENT_TOKEN"]]
        source = "DIGITS_CLIENT_TOKEN"
    else:
        raise SystemExit(f"gateway: no client credential: mount one at {args.credential_file} "
                         "(DIGITS_CLIENT_TOKEN_FILE) or set DIGITS_CLIENT_TOKEN")
    credentials = [line.strip() for line in lines if line.strip()]
    if not credentials:
        raise SystemExit(f"gateway: {source} holds no credential")
    for credential in credentials:
        if len(credential) < MIN_CREDENTIAL_LENGTH or not CREDENTIAL_PATTERN.match(credential):
            raise SystemExit(f"gateway: a credential in {source} is shorter than {MIN_CREDENTIAL_LENGTH} characters or "
                             "holds spaces or non-ASCII characters (make one with: openssl rand -hex 32)")
    return credentials


def torchserve_properties(config: Path, token_expiration_min: float) -> str:
    """config.properties as shipped, with token_expiration_min replaced when asked (TorchServe reads that key from
    the file only, never from TS_TOKEN_EXPIRATION_MIN)."""
    text = config.read_text()
    if token_expiration_min > 0:
        text = re.sub(r"(?m)^token_expiration_min=.*$", f"token_expiration_min={token_expiration_min:g}", text)
    return text


def max_body_bytes(properties_text: str) -> int:
    found = re.search(r"(?m)^max_request_size=(\d+)", properties_text)
    return int(found.group(1)) if found else 6553500


def render_nginx(args, state: Path, body_bytes: int) -> str:
    values = {
        "NGINX_WORKERS": str(args.nginx_workers),
        "STATE_DIR": str(state),
        "GATEWAY_DIR": str(ROOT / "gateway"),
        "ACCESS_LOG": "/dev/stdout requests" if args.access_log == "stdout" else "off",
        "MAX_BODY_BYTES": str(body_bytes),
        "RATE_LIMIT": str(args.rate_limit),
        "RATE_BURST": str(args.rate_burst),
        "TS_INFERENCE_PORT": str(args.internal_port_base),
        "TS_METRICS_PORT": str(args.internal_port_base + 2),
        "TS_GRPC_PORT": str(args.internal_port_base + 3),
        "GATEWAY_ADDRESS": args.address,
        "GATEWAY_PORT": str(args.port),
        "GATEWAY_GRPC_PORT": str(args.grpc_port),
        "METRICS_ADDRESS": args.metrics_address,
        "METRICS_PORT": str(args.metrics_port),
        "WEB_DIR": str(args.web_dir.resolve()),
        "REQUIRE_CREDENTIAL": "false" if args.no_client_credential else "true",
    }
    text = (ROOT / "gateway" / "nginx.conf.template").read_text()
    text = re.sub(r"\{\{([A-Z_]+)\}\}", lambda match: values[match.group(1)], text)
    return text


def mounted_noexec(path: Path) -> bool:
    """True if `path` lies on a filesystem mounted noexec (Docker's --tmpfs default)."""
    best, options = "", ""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 4 and str(path).startswith(fields[1]) and len(fields[1]) > len(best):
                best, options = fields[1], fields[3]
    except OSError:
        return False
    return "noexec" in options.split(",")


def write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


# ---------------------------------------------------------------- the admin socket


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


# ---------------------------------------------------------------- keys


def key_expiry(key_file: Path, kind: str) -> float:
    """When TorchServe's key of this kind expires, as a Unix time (key_file.json says, e.g. 2026-11-29T15:16:06Z)."""
    stamp = json.loads(key_file.read_text())[kind]["expiration time"]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()


def read_new_key(key_file: Path, kind: str, old: str, timeout: float = 5.0) -> str:
    """The key TorchServe wrote after a rotation (it rewrites the file in place: retry while half-written)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            key = read_token(key_file, kind)
            if key != old:
                return key
        except TokenFileError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"TorchServe did not write a new {kind} key within {timeout:.0f} s")
        time.sleep(0.005)


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


# ---------------------------------------------------------------- processes


def start_torchserve(args, state: Path, properties: Path) -> subprocess.Popen:
    base = args.internal_port_base
    environ = {name: value for name, value in os.environ.items() if not name.startswith("TS_")}
    environ.update({
        "TMPDIR": str(state / "tmp"), "TEMP": str(state / "tmp"),  # pid file and worker sockets
        "LOG_LOCATION": str(state / "logs"), "METRICS_LOCATION": str(state / "logs"),
        "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{base}",
        "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{base + 1}",
        "TS_METRICS_ADDRESS": f"http://127.0.0.1:{base + 2}",
        "TS_GRPC_INFERENCE_ADDRESS": "127.0.0.1", "TS_GRPC_INFERENCE_PORT": str(base + 3),
        "TS_GRPC_MANAGEMENT_ADDRESS": "127.0.0.1", "TS_GRPC_MANAGEMENT_PORT": str(base + 4),
        "TS_INITIAL_WORKER_PORT": str(base + 1000),
        "TS_LOAD_MODELS": args.load_models,
        "TS_MODEL_STORE": str(args.model_store),
        "TS_METRICS_CONFIG": str(ROOT / "metrics.yaml"),
    })
    bin_dir = Path(sys.executable).parent
    environ["PATH"] = f"{bin_dir}:{environ.get('PATH', '/usr/bin:/bin')}"
    command = [str(bin_dir / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config", str(properties),
               "--model-store", str(args.model_store), "--log-config", str(ROOT / "log4j2.xml")]
    # stdout/stderr inherited, never a pipe: the Java frontend would hold a pipe open (README of TorchServe facts).
    # Its own session: a Ctrl-C or a signal to our process group reaches run.py alone, which stops it in order.
    return subprocess.Popen(command, cwd=state, env=environ, stdin=subprocess.DEVNULL, start_new_session=True)


def start_nginx(state: Path) -> subprocess.Popen:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return subprocess.Popen([nginx, "-c", str(state / "nginx.conf"), "-p", str(state / "nginx"), "-e", "stderr"],
                            stdin=subprocess.DEVNULL, start_new_session=True)


def wait_for(condition, timeout: float, what: str, children: Children) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        check_children(children)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not within {timeout:.0f} s")
        time.sleep(0.1)


def check_children(children: Children) -> None:
    for name in ("torchserve", "nginx"):
        process = getattr(children, name)
        if process is not None and process.poll() is not None:
            raise ChildProcessError(f"{name} exited with status {process.returncode}")


def admin_answers(state: Path) -> bool:
    try:
        admin(state, "GET", "inflight")
        return True
    except OSError:
        return False


def scale(endpoints: Endpoints, model: str, workers: int) -> None:
    token = read_token(endpoints.key_file, "management")
    status, body = http_json(f"{endpoints.management}/models/{model}?min_worker={workers}&max_worker={workers}"
                             "&synchronous=false", token, method="PUT", data=b"")
    if status not in (200, 202):
        raise RuntimeError(f"could not scale {model} to {workers} workers: HTTP {status} {body}")


def stop_process(process: subprocess.Popen | None, sig: int, timeout: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("pid %d still running %.0f s after signal %d: killing it", process.pid, timeout, sig)
        process.kill()
        process.wait()


def stop_torchserve(children: Children, state: Path, timeout: float = 20.0) -> None:
    """SIGTERM to the Java frontend (it stops its workers), then wait for the launcher to return."""
    launcher = children.torchserve
    if launcher is None or launcher.poll() is not None:
        return
    try:
        frontend = int((state / "tmp" / ".model_server.pid").read_text())
        os.kill(frontend, signal.SIGTERM)
    except (OSError, ValueError):
        launcher.terminate()
    try:
        launcher.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("TorchServe still running %.0f s after SIGTERM: killing it", timeout)
        try:
            os.kill(int((state / "tmp" / ".model_server.pid").read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        launcher.kill()
        launcher.wait()


def drain(args, children: Children, state: Path) -> None:
    started = time.monotonic()
    try:
        admin(state, "PUT", "draining", "1")
        log.info("draining: readiness is 503; closing the listeners in %.1f s", args.drain_seconds)
        time.sleep(args.drain_seconds)
    except OSError:
        pass  # nginx is already gone
    # SIGQUIT: nginx closes its listening sockets, answers every request it has read, then exits.
    stop_process(children.nginx, signal.SIGQUIT, timeout=15.0)
    stop_torchserve(children, state)
    log.info("drained and stopped in %.1f s", time.monotonic() - started)


# ---------------------------------------------------------------- main


def run(args) -> int:
    credentials = read_credentials(args)
    state = args.state_dir.resolve()
    for sub in ("tmp", "logs", "nginx"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    if mounted_noexec(state):
        log.warning("%s is mounted noexec: TorchServe cannot load its native socket library from there and gives "
                    "its workers TCP ports on 127.0.0.1 instead of Unix sockets (docker run --tmpfs /tmp:exec)", state)
    for leftover in ("key_file.json", "admin.sock", "nginx.pid"):
        (state / leftover).unlink(missing_ok=True)
    if credentials:
        write_private(state / "credentials", "\n".join(credentials) + "\n")
    else:
        (state / "credentials").unlink(missing_ok=True)
        log.warning("no client credential: anyone on this machine can use the gateway on %s:%d", args.address,
                    args.port)
    properties_text = torchserve_properties(args.config, args.token_expiration_min)
    write_private(state / "config.properties", properties_text)
    write_private(state / "nginx.conf", render_nginx(args, state, max_body_bytes(properties_text)))
    endpoints = Endpoints(
        inference=f"http://127.0.0.1:{args.internal_port_base}",
        management=f"http://127.0.0.1:{args.internal_port_base + 1}",
        metrics=f"http://127.0.0.1:{args.internal_port_base + 2}",
        grpc_inference=f"127.0.0.1:{args.internal_port_base + 3}",
        grpc_management=f"127.0.0.1:{args.internal_port_base + 4}",
        key_file=state / "key_file.json",
    )

    children = Children()
    stopping = []

    def on_signal(number, _frame):
        if not stopping:
            stopping.append(number)
            raise Stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        children.torchserve = start_torchserve(args, state, state / "config.properties")
        wait_for(lambda: endpoints.key_file.exists() and endpoints.key_file.stat().st_size > 0, 120,
                 "TorchServe's key file", children)
        children.nginx = start_nginx(state)
        wait_for(lambda: admin_answers(state), 30, "nginx", children)
        keys = Keys(endpoints, state)
        wait_for(lambda: try_publish(keys), 30, "TorchServe's inference key", children)
        if args.workers > 0:
            wait_for(lambda: try_call(lambda: scale(endpoints, args.model, args.workers)), 60, "scaling", children)
        wait_until_ready(endpoints, args.model, args.start_timeout, lambda: children.torchserve.poll() is None)
        admin(state, "PUT", "ready", "1")  # /healthz/ready follows TorchServe's /ping from now on
        log.info("gateway ready: REST, health and the web page on %s:%d, gRPC on %s:%d, metrics on %s:%d",
                 args.address, args.port, args.address, args.grpc_port, args.metrics_address, args.metrics_port)
        log.info("the web page: %s", page_url(args.address, args.port))
        while True:
            check_children(children)
            if keys.due():
                keys.rotate()
            time.sleep(0.2)
    except Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        drain(args, children, state)
        return 0
    except (ChildProcessError, RuntimeError, TimeoutError, OSError, TokenFileError) as error:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log.error("gateway: %s; stopping", error)
        stop_process(children.nginx, signal.SIGTERM, timeout=5.0)
        stop_torchserve(children, state, timeout=10.0)
        return EXIT_CHILD_DIED


def page_url(address: str, port: int) -> str:
    """Where a browser on this machine opens the page (a wildcard address listens on loopback too)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def try_publish(keys: Keys) -> bool:
    return try_call(keys.publish)


def try_call(call) -> bool:
    try:
        call()
        return True
    except (OSError, RuntimeError, TokenFileError, KeyError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(message)s", stream=sys.stdout)
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except SystemExit as error:
        if isinstance(error.code, str):
            print(error.code, file=sys.stderr)
            return EXIT_BAD_CONFIG
        raise


if __name__ == "__main__":
    sys.exit(main())
