"""A TorchServe of its own: free ports, own temp dir, logs and key file, token auth on; stopped by its own pids.

Used by the integration tests and scripts/benchmark.py. It never meets a TorchServe the user runs: its
listeners, gRPC ports and worker ports are picked free, and its TMPDIR (pid file, worker sockets), logs and
key_file.json live in a directory of its own (keep it short: a Unix socket path has ~100 bytes).
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
from scripts.serving import ROOT, Endpoints, read_token, wait_until_ready  # noqa: E402

BIN = Path(sys.executable).parent
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


def pid_alive(pid: int) -> bool:
    """Running and not a zombie (a process can exit between two questions: that is an answer, not an error)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def package(artifacts: Path, store: Path, name: str, model_config: Path | None = None, version: str = "1.0",
            archive_name: str | None = None) -> Path:
    command = [str(ROOT / "scripts" / "package.sh"), "--artifacts", str(artifacts), "--export-path", str(store),
               "--model-name", name, "--version", version, "--archive-name", archive_name or name]
    if model_config:
        command += ["--model-config", str(model_config)]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    subprocess.run(command, check=True, env=env, capture_output=True)
    return store / f"{archive_name or name}.mar"


def model_name_of(archive: Path) -> str:
    """The model name in a .mar's manifest (the file name may differ: digits_v2.mar holds model digits)."""
    with zipfile.ZipFile(archive) as mar:
        return json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["modelName"]


@dataclass
class Server:
    workdir: Path
    env: dict
    endpoints: Endpoints
    process: subprocess.Popen
    store: Path | None = None
    models: str = ""  # the archives it loads at start, comma-separated
    killed: list = field(default_factory=list)  # pids stop() had to SIGKILL: not a clean stop

    @property
    def inference_token(self) -> str:
        return read_token(self.endpoints.key_file, "inference")

    @property
    def management_token(self) -> str:
        return read_token(self.endpoints.key_file, "management")

    def auth(self, kind: str = "inference") -> dict:
        return {"Authorization": f"Bearer {read_token(self.endpoints.key_file, kind)}"}

    def describe(self, model: str) -> list[dict]:
        response = requests.get(f"{self.endpoints.management}/models/{model}", headers=self.auth("management"), timeout=10)
        response.raise_for_status()
        return response.json()

    def worker_pids(self, model: str) -> list[int]:
        return [int(worker["pid"]) for entry in self.describe(model) for worker in entry["workers"]]

    def frontend_pid(self) -> int:
        return int((self.workdir / "tmp" / ".model_server.pid").read_text())

    def kill_a_worker(self, model: str, timeout: float = 60) -> tuple[int, float | None]:
        """kill -9 one of the model's workers. Returns its pid and the seconds until TorchServe has replaced it
        (describe shows as many READY workers as before, the killed pid not among them); None if not in time."""
        workers = self.describe(model)[0]["workers"]
        victim = int(workers[0]["pid"])
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while time.monotonic() - killed_at < timeout:
            try:
                ready = {int(worker["pid"]) for worker in self.describe(model)[0]["workers"]
                         if worker["status"] == "READY"}
            except requests.RequestException:
                ready = set()
            if len(ready) >= len(workers) and victim not in ready:
                return victim, time.monotonic() - killed_at
            time.sleep(0.1)
        return victim, None

    def settled_logs(self, quiet: float = 1.0, timeout: float = 15.0) -> dict[str, str]:
        """The log files' text once none has grown for `quiet` seconds: TorchServe writes them through log4j2's
        async logger and the workers' stdout readers, so a line can land a moment after the event behind it."""
        def sizes() -> dict:
            return {path: path.stat().st_size for path in (self.workdir / "logs").glob("*.log")}

        deadline = time.monotonic() + timeout
        last, stable_since = sizes(), time.monotonic()
        while time.monotonic() - stable_since < quiet and time.monotonic() < deadline:
            time.sleep(0.1)
            now = sizes()
            if now != last:
                last, stable_since = now, time.monotonic()
        return {path.name: path.read_text(errors="replace") for path in last}

    def wait_until_ready(self, timeout: float = 180) -> None:
        """Until every worker of every model it loads is READY. Stops the server when it does not get there and
        raises RuntimeError with the logs' tails."""
        try:
            for model in dict.fromkeys(model_name_of(self.store / archive) for archive in self.models.split(",")):
                wait_until_ready(self.endpoints, model, timeout, lambda: self.process.poll() is None)
        except (TimeoutError, RuntimeError) as error:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"TorchServe did not become ready: {error}\n{tail}") from None
        except BaseException:  # anything else (a bug, Ctrl-C): never leave the server behind
            self.stop()
            raise

    def ports(self) -> list[int]:
        endpoints = self.endpoints
        return [int(address.rsplit(":", 1)[1]) for address in (endpoints.inference, endpoints.management,
                                                               endpoints.metrics, endpoints.grpc_inference,
                                                               endpoints.grpc_management)]

    def listening(self) -> bool:
        """Whether the frontend listens on all five ports (it opens them before its workers are up). Asked of the
        frontend process itself: a port another process took would accept a connection too."""
        try:
            frontend = psutil.Process(self.frontend_pid())
            bound = {connection.laddr.port for connection in frontend.net_connections(kind="inet")
                     if connection.status == psutil.CONN_LISTEN}
        except (OSError, ValueError, psutil.Error):
            return False
        return set(self.ports()) <= bound

    def log_texts(self) -> dict[str, str]:
        paths = [self.workdir / "console.log", *sorted((self.workdir / "logs").glob("*.log"))]
        return {path.name: path.read_text(errors="replace") for path in paths if path.exists()}

    def wait_for_log(self, texts: list[str], timeout: float) -> list[str]:
        """Until every one of `texts` is in the logs (or `timeout` seconds pass): the texts still missing."""
        deadline = time.monotonic() + timeout
        while True:
            found = "\n".join(self.log_texts().values())
            missing = [text for text in texts if text not in found]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.2)

    def log_tail(self, lines: int = 40) -> str:
        text = []
        for name in ("console.log", "logs/ts_log.log", "logs/model_log.log"):
            path = self.workdir / name
            if path.exists():
                text.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(text)

    def stop(self, timeout: float = 60) -> list[int]:
        """Stop TorchServe (`torchserve --stop`) and wait until the frontend and every worker have exited; returns
        their pids. Whatever is still running after `timeout` is killed (teardown must not leave processes behind)
        and listed in `killed`: a clean stop is one with `killed` empty, and the tests claiming one check that."""
        pids = []
        try:
            frontend = self.frontend_pid()
            pids.append(frontend)
            pids += [child.pid for child in psutil.Process(frontend).children(recursive=True)]
        except (OSError, ValueError, psutil.Error):
            pass
        subprocess.run([str(BIN / "torchserve"), "--stop"], env=self.env, cwd=self.workdir, capture_output=True, timeout=60)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
            time.sleep(0.2)
        self.killed = []
        for pid in pids:  # only processes this fixture started
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
                except OSError:
                    pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return pids


def launch_server(store: Path, workdir: Path, models: str, extra_env: dict | None = None,
                  config: Path = ROOT / "config.properties", timeout: float = 120) -> Server:
    """TorchServe with `config` (the shipped config.properties by default), its listeners moved to free ports;
    returns once they are open, its workers possibly still starting (see Server.wait_until_ready). Started again on
    other ports if one was taken before TorchServe bound it."""
    def attempt() -> Server:
        server = spawn_server(store, workdir, models, extra_env, config)
        deadline = time.monotonic() + timeout
        while not server.listening():
            if server.process.poll() is not None or time.monotonic() > deadline:
                tail, clash = server.log_tail(), port_taken("\n".join(server.log_texts().values()))
                server.stop()
                raise (PortClash if clash else RuntimeError)(f"TorchServe did not open its ports:\n{tail}")
            time.sleep(0.1)
        return server

    return retry_port_clash(attempt)


def spawn_server(store: Path, workdir: Path, models: str, extra_env: dict | None, config: Path) -> Server:
    """The TorchServe process on free ports, just started. Whatever an earlier attempt left in `workdir` is cleared."""
    ports = free_ports(5)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    for leftover in (workdir / "tmp" / ".model_server.pid", workdir / "key_file.json", workdir / "console.log"):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(workdir / "logs", ignore_errors=True)
    # A stray TS_* variable from the user's shell must not change the server under test.
    env = {name: value for name, value in os.environ.items() if not name.startswith("TS_")}
    env.update({
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "TMPDIR": str(workdir / "tmp"),  # the launcher's pid file and the workers' sockets
        "TEMP": str(workdir / "tmp"),  # the Java frontend's java.io.tmpdir
        "LOG_LOCATION": str(workdir / "logs"),
        "METRICS_LOCATION": str(workdir / "logs"),
        "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{ports[0]}",
        "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{ports[1]}",
        "TS_METRICS_ADDRESS": f"http://127.0.0.1:{ports[2]}",
        "TS_GRPC_INFERENCE_PORT": str(ports[3]),
        "TS_GRPC_MANAGEMENT_PORT": str(ports[4]),
        "TS_INITIAL_WORKER_PORT": str(20000 + ports[0] % 20000),  # names the workers' Unix sockets in TMPDIR
        "TS_LOAD_MODELS": models,
        "TS_METRICS_CONFIG": str(ROOT / "metrics.yaml"),
        **(extra_env or {}),
    })
    endpoints = Endpoints.from_config(config, workdir / "key_file.json", environ=env)
    console = open(workdir / "console.log", "wb")
    process = subprocess.Popen(
        [str(BIN / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config", str(config),
         "--model-store", str(store), "--log-config", str(ROOT / "log4j2.xml")],
        cwd=workdir, env=env, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    console.close()
    return Server(workdir, env, endpoints, process, store=store, models=models)


def start_server(store: Path, workdir: Path, models: str, timeout: float = 180, extra_env: dict | None = None,
                 config: Path = ROOT / "config.properties") -> Server:
    """launch_server, then wait until every worker of every model is READY."""
    server = launch_server(store, workdir, models, extra_env, config)
    server.wait_until_ready(timeout)
    return server
