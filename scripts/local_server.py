"""A TorchServe of its own: free ports, own temp dir, logs and key file, token auth on; stopped by its own pids.

Used by the integration tests and scripts/benchmark.py. It never meets a TorchServe the user runs: its
listeners, gRPC ports and worker ports are picked free, and its TMPDIR (pid file, worker sockets), logs and
key_file.json live in a directory of its own (keep it short: a Unix socket path has ~100 bytes).
"""
from __future__ import annotations

import json
import os
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


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


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
        while time.monotonic() < deadline and any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids):
            time.sleep(0.2)
        self.killed = []
        for pid in pids:  # only processes this fixture started
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
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


def start_server(store: Path, workdir: Path, models: str, timeout: float = 180, extra_env: dict | None = None,
                 config: Path = ROOT / "config.properties") -> Server:
    """TorchServe with `config` (the shipped config.properties by default), its listeners moved to free ports."""
    ports = free_ports(5)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
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
        "TS_INITIAL_WORKER_PORT": str(20000 + ports[0] % 20000),
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
    server = Server(workdir, env, endpoints, process)
    try:
        for model in dict.fromkeys(model_name_of(store / archive) for archive in models.split(",")):
            wait_until_ready(endpoints, model, timeout, lambda: process.poll() is None)
    except (TimeoutError, RuntimeError) as error:
        tail = server.log_tail()
        server.stop()
        raise RuntimeError(f"TorchServe did not become ready: {error}\n{tail}") from None
    except BaseException:  # anything else (a bug, Ctrl-C): never leave the server behind
        server.stop()
        raise
    return server
