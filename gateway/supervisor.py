"""The gateway's processes: TorchServe (serving.launch) and nginx started in order, watched, drained on SIGTERM, and
stopped together when either dies (exit 1, so an orchestrator restarts the whole unit)."""
from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.keys import Keys, admin, admin_answers
from gateway.render import (max_body_bytes, nginx_temp_dir, page_url, render_nginx, torchserve_properties,
                            write_private)
from gateway.settings import build_parser, credential_source, parse_credentials, read_credentials
from serving import launch
from serving.config import Ports
from serving.management import ManagementError, RestManagement, Unreachable
from serving.readiness import wait_until_ready
from serving.tokens import TokenFileError, read_token

log = logging.getLogger("gateway")

EXIT_CHILD_DIED = 1
EXIT_BAD_CONFIG = 2
WORKER_PORT_OFFSET = 1000  # the workers' ports (TCP where STATE_DIR is noexec) start this far above the REST port


@dataclass
class Children:
    torchserve: launch.Server | None = None
    nginx: subprocess.Popen | None = None


class Stop(Exception):
    """SIGTERM or SIGINT arrived: drain and exit 0."""


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


def start_torchserve(args, state: Path) -> launch.Server:
    """TorchServe on 127.0.0.1, REST on --internal-port-base and the rest above it, its output on ours (the
    container's log). Its own session: a Ctrl-C or a signal to our process group reaches us alone, and we stop it
    in order."""
    base = args.internal_port_base
    return launch.spawn(args.model_store, state, args.load_models, config=state / "config.properties",
                        ports=Ports.block(base), worker_port=base + WORKER_PORT_OFFSET, tmpdir=state / "tmp",
                        logs=state / "logs", console=launch.INHERIT, new_session=True)


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
    torchserve = children.torchserve.process if children.torchserve else None
    for name, process in (("torchserve", torchserve), ("nginx", children.nginx)):
        if process is not None and process.poll() is not None:
            raise ChildProcessError(f"{name} exited with status {process.returncode}")


def scale(endpoints, model: str, workers: int) -> None:
    api = RestManagement(endpoints.management, read_token(endpoints.key_file, "management"), timeout=5.0)
    api.scale(model, None, workers, workers, timeout=5.0)


class CredentialWatch:
    """The client credential file, read again every `every` seconds while the gateway serves: a changed set goes to
    nginx at once (PUT /admin/credentials, which adds the new credentials before it removes the old), so clients move
    to a new credential with no restart: add it, move the clients, remove the old one. A Kubernetes Secret mounted as
    a volume changes this way (the kubelet swaps the files in place; not when mounted with subPath). A changed file is
    read twice, 50 ms apart, and taken only when both agree; one that is missing, empty or holds a bad credential is
    refused, logged, and the current set stays."""

    def __init__(self, path: Path | None, state: Path, current: list[str], every: float = 1.0):
        self.path, self.state, self.every = path, state, every
        self.current = set(current)
        self.refused: str | None = None  # the text last refused, logged once
        self.next_look = time.monotonic() + every

    def look(self) -> None:
        if self.path is None or time.monotonic() < self.next_look:
            return
        self.next_look = time.monotonic() + self.every
        try:
            text = self.path.read_text()
            credentials = parse_credentials(text, str(self.path))
            if set(credentials) != self.current:
                time.sleep(0.05)  # a file being written in place (not replaced) may have been read half-written
                if self.path.read_text() != text:
                    return  # still changing: the next look reads it
        except (OSError, ValueError) as error:
            text = repr(error)
            if text != self.refused:
                log.error("client credentials not reloaded: %s; the current %d stay", error, len(self.current))
            self.refused = text
            return
        self.refused = None
        if set(credentials) == self.current:
            return
        try:
            admin(self.state, "PUT", "credentials", "\n".join(credentials))
        except (OSError, RuntimeError) as error:
            log.error("client credentials not reloaded: nginx's admin socket: %s; trying again", error)
            return
        write_private(self.state / "credentials", "\n".join(credentials) + "\n")
        added, removed = len(set(credentials) - self.current), len(self.current - set(credentials))
        self.current = set(credentials)
        log.info("client credentials reloaded from %s: %d now (%d added, %d removed)", self.path, len(self.current),
                 added, removed)


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


def stop_torchserve(children: Children, timeout: float = 20.0) -> None:
    if children.torchserve is not None:
        children.torchserve.stop(timeout)


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
    stop_torchserve(children)
    log.info("drained and stopped in %.1f s", time.monotonic() - started)


def run(args) -> int:
    credentials = read_credentials(args)
    state = args.state_dir.resolve()
    for sub in ("tmp", "logs", "nginx"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    temp = nginx_temp_dir(state)
    if temp.parent != state:  # run as root: where nginx's workers (nobody) can reach it, removed on exit
        temp.mkdir(exist_ok=True)
        temp.chmod(0o711)
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

    children = Children()
    stopping = []

    def on_signal(number, _frame):
        if not stopping:
            stopping.append(number)
            raise Stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    rotate_requested = []
    signal.signal(signal.SIGUSR1, lambda _number, _frame: rotate_requested.append(True))
    try:
        children.torchserve = start_torchserve(args, state)
        endpoints = children.torchserve.endpoints
        wait_for(lambda: endpoints.key_file.exists() and endpoints.key_file.stat().st_size > 0, 120,
                 "TorchServe's key file", children)
        children.nginx = start_nginx(state)
        wait_for(lambda: admin_answers(state), 30, "nginx", children)
        keys = Keys(endpoints, state)
        wait_for(lambda: try_publish(keys), 30, "TorchServe's inference key", children)
        if args.workers > 0:
            wait_for(lambda: try_call(lambda: scale(endpoints, args.model, args.workers)), 60, "scaling", children)
        wait_until_ready(endpoints, args.model, args.start_timeout, children.torchserve.running)
        admin(state, "PUT", "ready", "1")  # /healthz/ready follows TorchServe's /ping from now on
        log.info("gateway ready: REST, health and the web page on %s:%d, gRPC on %s:%d, metrics on %s:%d",
                 args.address, args.port, args.address, args.grpc_port, args.metrics_address, args.metrics_port)
        log.info("the web page: %s", page_url(args.address, args.port))
        watch = CredentialWatch(credential_source(args), state, credentials)
        resync_at = time.monotonic()
        while True:
            check_children(children)
            if rotate_requested:
                rotate_requested.clear()
                log.info("SIGUSR1: rotating TorchServe's keys now")
                keys.rotate_soon()
            keys.rotate_when_due()
            watch.look()
            if time.monotonic() >= resync_at:
                resync_at = time.monotonic() + 1.0
                try:
                    keys.resync()
                except (OSError, RuntimeError) as error:
                    log.error("nginx's admin socket: %s", error)
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
        stop_torchserve(children, timeout=10.0)
        return EXIT_CHILD_DIED
    finally:
        if temp.parent != state:
            shutil.rmtree(temp, ignore_errors=True)


def try_publish(keys: Keys) -> bool:
    return try_call(keys.publish)


def try_call(call) -> bool:
    try:
        call()
        return True
    except (OSError, RuntimeError, TokenFileError, KeyError, ValueError, ManagementError, Unreachable):
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
