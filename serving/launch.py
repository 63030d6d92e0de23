"""The one way to start and stop a TorchServe: `scripts/serve.sh`, the gateway, `scripts/gpu_check.sh`, the benchmark
and the tests all call it.

A server started here runs `torchserve --foreground` (the launcher stays its parent, so a caller that holds the
process sees it die), token auth on, with its environment built in one place: its listeners on the ports asked for
(free loopback ports by default, never meeting a TorchServe the user runs), its TMPDIR (pid file, worker sockets),
logs and key_file.json in directories of its own (keep TMPDIR short: a Unix socket path has ~100 bytes), and no
stray TS_* variable from the caller's shell unless asked. It is stopped by its own pids: SIGTERM to the Java
frontend (what `torchserve --stop` sends), a wait for the frontend and every worker, SIGKILL only for what is left.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from serving.archive import model_name_of
from serving.config import DEFAULT_CONFIG, KEY_FILE_NAME, ROOT, Endpoints, Ports
from serving.management import ManagementError, Unreachable, api_for
from serving.ports import PortClash, free_ports, port_taken, retry_port_clash
from serving.processes import kill_all, pid_alive, process_tree, wait_for_exit
from serving.readiness import wait_until_ready
from serving.tokens import read_token

BIN = Path(sys.executable).parent  # the venv whose torchserve and Python run the server and its workers
LOG_CONFIG = ROOT / "log4j2.xml"
METRICS_CONFIG = ROOT / "metrics.yaml"
PID_FILE_NAME = ".model_server.pid"  # where TorchServe's launcher writes the frontend's pid, in TMPDIR
FREE = "free"  # ports: pick free loopback ports
FROM_CONFIG = "config"  # ports: the config's own (and any TS_* override of them)
INHERIT = "inherit"  # console: the launcher writes to the caller's stdout and stderr
DESCRIBE_TIMEOUT = 10  # seconds for one describe call of worker_pids/kill_a_worker: a hung one fails, not waits

log = logging.getLogger(__name__)


def tempdir() -> Path:
    """The TMPDIR a server started without its own gets (the caller's)."""
    return Path(os.environ.get("TMPDIR") or "/tmp")


def torchserve_environment(models: str, tmpdir: Path, logs: Path, ports: Ports | None, store: Path,
                           worker_port: int | None = None, keep_ts_env: bool = False,
                           extra_env: dict | None = None) -> dict[str, str]:
    """The environment TorchServe starts with. `ports` None: the config's own listeners."""
    environ = dict(os.environ) if keep_ts_env else {
        name: value for name, value in os.environ.items() if not name.startswith("TS_")}
    environ.update({
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "TMPDIR": str(tmpdir),  # the launcher's pid file and the workers' sockets
        "TEMP": str(tmpdir),  # the Java frontend's java.io.tmpdir
        "LOG_LOCATION": str(logs),
        "METRICS_LOCATION": str(logs),
        "TS_LOAD_MODELS": models,
        "TS_MODEL_STORE": str(store),
        "TS_METRICS_CONFIG": str(METRICS_CONFIG),
    })
    if ports is not None:
        environ.update({
            "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{ports.inference}",
            "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{ports.management}",
            "TS_METRICS_ADDRESS": f"http://127.0.0.1:{ports.metrics}",
            "TS_GRPC_INFERENCE_ADDRESS": "127.0.0.1", "TS_GRPC_INFERENCE_PORT": str(ports.grpc_inference),
            "TS_GRPC_MANAGEMENT_ADDRESS": "127.0.0.1", "TS_GRPC_MANAGEMENT_PORT": str(ports.grpc_management),
            # Names the workers' Unix sockets in TMPDIR (TCP ports on 127.0.0.1 where TMPDIR is mounted noexec).
            "TS_INITIAL_WORKER_PORT": str(worker_port or 20000 + ports.inference % 20000),
        })
    environ.update(extra_env or {})
    return environ


@dataclass
class Server:
    """A TorchServe started by `spawn` (or found running by `attach`)."""
    workdir: Path  # its working directory: key_file.json lands here
    env: dict
    endpoints: Endpoints
    process: subprocess.Popen | None  # the launcher (None: attached to a server another process started)
    store: Path | None = None
    models: str = ""  # the archives it loads at start, comma-separated
    tmpdir: Path | None = None  # default: workdir/tmp
    logs: Path | None = None  # default: workdir/logs
    console: Path | None = None  # the launcher's stdout and stderr (None: the caller's)
    killed: list = field(default_factory=list)  # pids stop() had to SIGKILL: not a clean stop

    def __post_init__(self):
        self.tmpdir = self.tmpdir or self.workdir / "tmp"
        self.logs = self.logs or self.workdir / "logs"

    @property
    def pid_file(self) -> Path:
        return self.tmpdir / PID_FILE_NAME

    def running(self) -> bool:
        """The launcher (when held) and the frontend are alive."""
        if self.process is not None and self.process.poll() is not None:
            return False
        try:
            return pid_alive(self.frontend_pid())
        except (OSError, ValueError):
            return self.process is not None  # just started: the launcher has not written the pid file yet

    @property
    def inference_token(self) -> str:
        return read_token(self.endpoints.key_file, "inference")

    @property
    def management_token(self) -> str:
        return read_token(self.endpoints.key_file, "management")

    def auth(self, kind: str = "inference") -> dict:
        return {"Authorization": f"Bearer {read_token(self.endpoints.key_file, kind)}"}

    def worker_pids(self, model: str) -> list[int]:
        """The pids of the model's workers, as describe (serving.management) lists them."""
        entries = api_for(self.endpoints, timeout=DESCRIBE_TIMEOUT).describe(model)
        return [int(worker["pid"]) for entry in entries for worker in entry["workers"]]

    def frontend_pid(self) -> int:
        return int(self.pid_file.read_text())

    def kill_a_worker(self, model: str, timeout: float = 60) -> tuple[int, float | None]:
        """kill -9 one of the model's workers. Returns its pid and the seconds until TorchServe has replaced it
        (describe shows as many READY workers as before, the killed pid not among them); None if not in time.
        The benchmark's recovery measurement (benchmarks/load.py) uses it as well as the tests."""
        api = api_for(self.endpoints, timeout=DESCRIBE_TIMEOUT)
        workers = api.describe(model)[0]["workers"]
        victim = int(workers[0]["pid"])
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while time.monotonic() - killed_at < timeout:
            try:
                ready = {int(worker["pid"]) for worker in api.describe(model)[0]["workers"]
                         if worker["status"] == "READY"}
            except (ManagementError, Unreachable):
                ready = set()
            if len(ready) >= len(workers) and victim not in ready:
                return victim, time.monotonic() - killed_at
            time.sleep(0.1)
        return victim, None

    def wait_until_ready(self, timeout: float = 180) -> None:
        """Until every worker of every model it loads is READY. Stops the server when it does not get there and
        raises RuntimeError with the logs' tails."""
        try:
            for model in dict.fromkeys(model_name_of(self.store / archive) for archive in self.models.split(",")):
                wait_until_ready(self.endpoints, model, timeout, self.running)
        except (TimeoutError, RuntimeError) as error:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"TorchServe did not become ready: {error}\n{tail}") from None
        except BaseException:  # anything else (a bug, Ctrl-C): never leave the server behind
            self.stop()
            raise

    def ports(self) -> list[int]:
        return self.endpoints.ports().all()

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
        paths = [self.console, *sorted(self.logs.glob("*.log"))] if self.console else sorted(self.logs.glob("*.log"))
        return {path.name: path.read_text(errors="replace") for path in paths if path.exists()}

    def log_tail(self, lines: int = 40) -> str:
        text = []
        for path in (self.console, self.logs / "ts_log.log", self.logs / "model_log.log"):
            if path and path.exists():
                text.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(text)

    def stop(self, timeout: float = 60) -> list[int]:
        """SIGTERM to the Java frontend (it stops its workers) and wait until the frontend and every worker have
        exited; returns their pids. Whatever still runs after `timeout` is killed (a stop must not leave processes
        behind) and listed in `killed`: a clean stop is one with `killed` empty, and the tests claiming one check
        that."""
        try:
            frontend = self.frontend_pid()
        except (OSError, ValueError):
            frontend = None
        pids = process_tree(frontend) if frontend and pid_alive(frontend) else []
        if pids and self.process is None:  # attached: the launcher that waits for the frontend goes with it
            try:
                launcher = psutil.Process(frontend).parent()
                if launcher and "torchserve" in " ".join(launcher.cmdline()):
                    pids.append(launcher.pid)
            except psutil.Error:
                pass
        if pids:
            try:
                os.kill(frontend, signal.SIGTERM)
            except OSError:
                pass
        elif self.process is not None and self.process.poll() is None:
            self.process.terminate()  # the launcher before it started the frontend
        self.killed = kill_all(wait_for_exit(pids, timeout))
        if self.process is not None:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.pid_file.unlink(missing_ok=True)
        return pids


def spawn(store: Path, workdir: Path, models: str, *, config: Path = DEFAULT_CONFIG, ports: Ports | str = FREE,
          tmpdir: Path | None = None, logs: Path | None = None, console: Path | str | None = None,
          worker_port: int | None = None, keep_ts_env: bool = False, new_session: bool = False,
          keep_logs: bool = False, extra_env: dict | None = None) -> Server:
    """The TorchServe process, just started (its ports possibly not open yet: see `launch`).

    ports: FREE (loopback ports picked free now), FROM_CONFIG, or the Ports to listen on (127.0.0.1).
    tmpdir, logs: default workdir/tmp and workdir/logs; whatever an earlier server left there is cleared (the logs
    are kept with keep_logs: TorchServe appends to them).
    console: a file for the launcher's output (default workdir/console.log), or INHERIT: the caller's stdout and
    stderr. Never a pipe: the Java frontend would hold it open.
    keep_ts_env: let the caller's TS_* variables override the config (scripts/serve.sh); otherwise a stray one from
    the shell never changes the server.
    new_session: its own session, so a Ctrl-C or a signal to the caller's process group does not reach it.
    """
    tmpdir, logs = tmpdir or workdir / "tmp", logs or workdir / "logs"
    chosen = Ports(*free_ports(5)) if ports == FREE else None if ports == FROM_CONFIG else ports
    for directory in (workdir, tmpdir):
        directory.mkdir(parents=True, exist_ok=True)
    for leftover in (tmpdir / PID_FILE_NAME, workdir / KEY_FILE_NAME):
        leftover.unlink(missing_ok=True)
    if not keep_logs:
        shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    env = torchserve_environment(models, tmpdir, logs, chosen, store, worker_port, keep_ts_env, extra_env)
    endpoints = Endpoints.from_config(config, workdir / KEY_FILE_NAME, environ=env)
    console = None if console == INHERIT else Path(console or workdir / "console.log")
    output = open(console, "wb") if console else None
    try:
        process = subprocess.Popen(
            [str(BIN / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config", str(config),
             "--model-store", str(store), "--log-config", str(LOG_CONFIG)],
            cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=output,
            stderr=subprocess.STDOUT if output else None, start_new_session=new_session,
        )
    finally:
        if output:
            output.close()
    return Server(workdir, env, endpoints, process, store=store, models=models, tmpdir=tmpdir, logs=logs,
                  console=console)


def launch(store: Path, workdir: Path, models: str, timeout: float = 120, **options) -> Server:
    """`spawn`, then wait until the frontend listens on its five ports (its workers possibly still starting: see
    Server.wait_until_ready). With free ports, started again on others if one was taken before TorchServe bound it."""
    def attempt() -> Server:
        server = spawn(store, workdir, models, **options)
        deadline = time.monotonic() + timeout
        while not server.listening():
            if not server.running() or time.monotonic() > deadline:
                tail, clash = server.log_tail(), port_taken("\n".join(server.log_texts().values()))
                server.stop()
                raise (PortClash if clash else RuntimeError)(f"TorchServe did not open its ports:\n{tail}")
            time.sleep(0.1)
        return server

    return retry_port_clash(attempt) if options.get("ports", FREE) == FREE else attempt()


def start(store: Path, workdir: Path, models: str, timeout: float = 180, **options) -> Server:
    """`launch`, then wait until every worker of every model is READY."""
    server = launch(store, workdir, models, **options)
    server.wait_until_ready(timeout)
    return server


def attach(workdir: Path, config: Path = DEFAULT_CONFIG, tmpdir: Path | None = None,
           logs: Path | None = None, console: Path | None = None) -> Server | None:
    """The TorchServe another process started with this workdir and TMPDIR (scripts/serve.sh's), if it runs."""
    server = Server(workdir, dict(os.environ), Endpoints.from_config(config, workdir / KEY_FILE_NAME), None,
                    tmpdir=tmpdir or tempdir(), logs=logs, console=console)
    try:
        frontend = psutil.Process(server.frontend_pid())
        if frontend.status() != psutil.STATUS_ZOMBIE and "org.pytorch.serve.ModelServer" in frontend.cmdline():
            return server
    except (OSError, ValueError, psutil.Error):
        pass
    return None
