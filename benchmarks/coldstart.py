"""The container image's cold start: what a node pays from "run this image" to the first answer.

    python -m benchmarks.coldstart                                   # digits-serve:latest: transfer, then 5 starts
    python -m benchmarks.coldstart --image digits-serve:1.0.0 --runs 9 --no-transfer

Two parts, each printed as it is measured:

1. **Transfer** (a node that does not have the image yet): the bytes of `docker save` (what an uncompressed pull
   carries), the same gzipped at level 6 (about what a registry sends: Docker pushes gzip layers), and `docker load`
   of the saved file into a second Docker daemon with an empty data root, started for the purpose (a new node: no
   layer there yet), then one start there. Needs root (the second daemon) and twice the image's size on disk.
2. **Start** (the image present): `docker run` -> ready -> first answer, `--runs` times, each split by the image's
   own logs into: the container's start, the gateway and TorchServe's launcher until the frontend's JVM logs its
   first line, the frontend's start, each worker's start (its imports, torch's among them), the weights, TorchScript,
   the warm-up (the handler logs those durations), and the gateway's readiness. Medians over the runs.

Every container runs with --network host on free loopback ports, read-only with a /tmp tmpfs (as the container tests
and docs/container.md run it), and is removed after; the second daemon is stopped and its data root removed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

from serving.ports import free_ports

LOG_DIR = "/tmp/digits/logs"  # the image's STATE_DIR/logs: TorchServe's ts_log.log and model_log.log
STARTED = re.compile(r"started in: worker start (\d+) ms, weights (\d+) ms, TorchScript (\d+) ms, warm-up (\d+) ms, "
                     r"the rest (\d+) ms")
LOG_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]\d{3})")
POLL_SECONDS = 0.02
GZIP_LEVEL = 6  # gzip's default, and Docker's for the layers it pushes


def docker(*args: str, host: str | None = None, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    command = ["docker", *(["-H", host] if host else []), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({result.returncode}): {result.stderr.strip()[-1500:]}")
    return result


def log_time(line: str) -> float | None:
    """A log4j2 (ISO8601) or Python logging time stamp, in the container's clock (UTC), as epoch seconds."""
    match = LOG_STAMP.match(line)
    if not match:
        return None
    stamp = match.group(1).replace(",", ".").replace("T", " ")
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


def docker_time(stamp: str) -> float:
    """Docker's RFC 3339 time with nanoseconds, as epoch seconds."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{whole}.{fraction[:6]:0<6}+00:00").timestamp()


def digit_png() -> bytes:
    """A real held-out digit (the benchmark's usual input) as PNG bytes."""
    from benchmarks.inputs import sample_inputs

    return sample_inputs(1)[0]


def start_once(image: str, workdir: Path, body: bytes, host: str | None = None, name: str | None = None,
               timeout: float = 120) -> dict:
    """One `docker run` -> ready -> first answer, and the start split by the container's logs: seconds after the
    `docker run` call for each event, and each worker's own durations (ms). The container is removed after."""
    rest, grpc_port, metrics = free_ports(3)
    internal = free_ports(5, consecutive=True)[0]
    while {rest, grpc_port, metrics} & set(range(internal, internal + 5)):
        internal = free_ports(5, consecutive=True)[0]
    credential = secrets.token_hex(16)
    token_file = workdir / f"token-{credential[:8]}"
    token_file.write_text(credential + "\n")
    token_file.chmod(0o644)  # the container's user reads it
    name = name or f"digits-coldstart-{secrets.token_hex(4)}"
    environment = {"GATEWAY_ADDRESS": "127.0.0.1", "METRICS_ADDRESS": "127.0.0.1", "GATEWAY_PORT": rest,
                   "GATEWAY_GRPC_PORT": grpc_port, "METRICS_PORT": metrics, "INTERNAL_PORT_BASE": internal}
    arguments = ["run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp:exec,size=1g",
                 "--mount", f"type=bind,source={token_file},target=/run/secrets/digits/token,readonly"]
    for key, value in environment.items():
        arguments += ["-e", f"{key}={value}"]
    base = f"http://127.0.0.1:{rest}"
    began = time.time()
    docker(*arguments, image, host=host)
    try:
        deadline = time.monotonic() + timeout
        ready = answered = None
        with requests.Session() as session:
            while answered is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} gave no answer within {timeout:.0f} s")
                try:
                    if ready is None:
                        if session.get(f"{base}/healthz/ready", timeout=2).status_code == 200:
                            ready = time.time()
                            continue
                    else:
                        answer = session.post(f"{base}/predictions/digits", data=body, timeout=10,
                                              headers={"Authorization": f"Bearer {credential}",
                                                       "Content-Type": "image/png"})
                        if answer.status_code == 200:
                            answered = time.time()
                            continue
                except requests.RequestException:
                    pass
                time.sleep(POLL_SECONDS)
        state = json.loads(docker("inspect", "--format", "{{json .State}}", name, host=host).stdout)
        memory = worker_memory(state["Pid"])
        ts_log = docker("exec", name, "cat", f"{LOG_DIR}/ts_log.log", host=host).stdout.splitlines()
        model_log = docker("exec", name, "cat", f"{LOG_DIR}/model_log.log", host=host).stdout.splitlines()
        logs = docker("logs", "--timestamps", name, host=host)
        gateway_log = (logs.stdout + logs.stderr).splitlines()
    finally:
        docker("rm", "-f", name, host=host, check=False, timeout=120)
        token_file.unlink(missing_ok=True)
    return {**split(began, docker_time(state["StartedAt"]), ts_log, model_log, gateway_log, ready, answered),
            "worker_mb": memory}


def worker_memory(init_pid: int) -> list[float]:
    """Resident memory (MB) of each TorchServe worker in the container whose init has this pid (seen from here)."""
    import psutil

    workers = [process for process in psutil.Process(init_pid).children(recursive=True)
               if "model_service_worker" in " ".join(process.cmdline())]
    return sorted(process.memory_info().rss / 1e6 for process in workers)


def split(began: float, started: float, ts_log: list[str], model_log: list[str], gateway_log: list[str],
          ready: float, answered: float) -> dict:
    """The events of one start, in seconds after `began` (the `docker run` call), and the slowest worker's durations
    (ms). The frontend writes "Model server started." on its stdout, the gateway's log; a worker is created its
    logged durations before its handler's line (an archive whose handler logs none leaves those out)."""
    def first(lines: list[str], text: str = "") -> float | None:
        return next((log_time(line) for line in lines if text in line and log_time(line) is not None), None)

    workers = []
    for line in model_log:
        match = STARTED.search(line)
        if match and log_time(line) is not None:
            parts = [int(value) for value in match.groups()]
            workers.append({"logged": log_time(line), "ms": parts, "created": log_time(line) - sum(parts) / 1000})
    events = {
        "container started": started,
        "frontend's first log line": first(ts_log),
        "frontend loads the archive": first(ts_log, "Loading initial models"),
        "first worker process": min((worker["created"] for worker in workers), default=None),
        "frontend started": first(gateway_log, "Model server started"),
        "last worker loaded": max((worker["logged"] for worker in workers), default=None),
        "gateway ready (its log)": first(gateway_log, "gateway ready"),
        "ready (seen by a client)": ready,
        "first answer": answered,
    }
    names = ("worker start", "weights", "TorchScript", "warm-up", "the rest")
    return {"events": {name: None if stamp is None else stamp - began for name, stamp in events.items()},
            "worker_ms": {name: max(worker["ms"][index] for worker in workers) for index, name in enumerate(names)}
            if workers else {}, "workers": len(workers)}


def print_starts(starts: list[dict], title: str) -> None:
    print(f"\n{title}: {len(starts)} start(s), median (min-max), seconds after `docker run`")
    for name in starts[0]["events"]:
        values = [start["events"][name] for start in starts if start["events"][name] is not None]
        if values:
            print(f"  {name:<28} {statistics.median(values):6.2f}  ({min(values):.2f}-{max(values):.2f})")
    memory = [megabytes for start in starts for megabytes in start.get("worker_mb", [])]
    if memory:
        print(f"  each worker's resident memory once ready: median {statistics.median(memory):.0f} MB "
              f"({min(memory):.0f}-{max(memory):.0f})")
    if not starts[0]["worker_ms"]:
        return
    print(f"  inside each worker (the slowest of {starts[0]['workers']}), median ms:")
    for name in starts[0]["worker_ms"]:
        values = [start["worker_ms"][name] for start in starts]
        print(f"    {name:<26} {statistics.median(values):6.0f}  ({min(values)}-{max(values)})")


class SecondDaemon:
    """A Docker daemon with an empty data root of its own (a node that never had the image), on its own socket; no
    bridge network, as the machine's daemon. Stopped by its pid and its directories removed on exit."""

    def __init__(self, root: Path):
        self.root = root
        self.socket = root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "SecondDaemon":
        if os.geteuid() != 0:
            raise SystemExit("coldstart: loading into a second Docker daemon needs root (or pass --no-transfer)")
        log = open(self.root / "dockerd.log", "wb")
        self.process = subprocess.Popen(
            ["dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
             "--pidfile", str(self.root / "docker.pid"), "--host", self.host, "--bridge=none", "--iptables=false",
             "--ip-masq=false"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 90
        while docker("info", host=self.host, check=False, timeout=20).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.root / "dockerd.log").read_text(errors="replace")[-1500:]
                self.__exit__(None, None, None)
                raise RuntimeError(f"the second dockerd did not start: {tail}")
            time.sleep(0.5)
        return self

    def __exit__(self, *_) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # dockerd leaves its network namespace mounted under its exec root: unmount what is left, deepest first.
        mounted = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for point in sorted((point for point in mounted if point.startswith(f"{self.root}/")), reverse=True):
            subprocess.run(["umount", point], check=False, capture_output=True)
        shutil.rmtree(self.root)


def transfer(image: str, workdir: Path, body: bytes) -> None:
    """The image saved to a file, its size raw and gzipped, loaded into an empty daemon, and one start there."""
    size = int(docker("image", "inspect", "--format", "{{.Size}}", image).stdout)
    saved = workdir / "image.tar"
    began = time.monotonic()
    docker("save", "--output", str(saved), image, timeout=1800)
    save_s = time.monotonic() - began
    began = time.monotonic()
    gzipped = 0
    with open(saved, "rb") as source:
        gzip = subprocess.Popen(["gzip", f"-{GZIP_LEVEL}", "-c"], stdin=source, stdout=subprocess.PIPE)
        while chunk := gzip.stdout.read(1 << 20):
            gzipped += len(chunk)
    if gzip.wait() != 0:
        raise RuntimeError(f"gzip failed ({gzip.returncode})")
    gzip_s = time.monotonic() - began
    print(f"\ntransfer: {image}, {size / 1e9:.2f} GB unpacked (docker image inspect)")
    print(f"  docker save                {saved.stat().st_size / 1e9:6.2f} GB in {save_s:.0f} s")
    print(f"  gzip -{GZIP_LEVEL} of it               {gzipped / 1e9:6.2f} GB in {gzip_s:.0f} s (one core)")
    for rate in (100, 1000):  # MB/s: a modest and a good node-to-registry link
        print(f"  pulling {gzipped / 1e9:.2f} GB at {rate:>4} MB/s     {gzipped / rate / 1e6:6.0f} s (transfer alone)")
    with SecondDaemon(Path(tempfile.mkdtemp(prefix="coldstart-node-", dir=workdir))) as node:
        began = time.monotonic()
        docker("load", "--input", str(saved), host=node.host, timeout=1800)
        print(f"  docker load on an empty daemon {time.monotonic() - began:6.1f} s")
        saved.unlink()
        print_starts([start_once(image, workdir, body, host=node.host)], "the first start on that node")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coldstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="digits-serve:latest", help="the image to measure (make image builds it)")
    parser.add_argument("--runs", type=int, default=5, help="starts with the image present")
    parser.add_argument("--no-transfer", action="store_true", help="skip the save, gzip and load into a new daemon")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the saved image goes (needs twice its size free)")
    args = parser.parse_args(argv)
    if docker("image", "inspect", args.image, check=False).returncode != 0:
        print(f"coldstart: no image {args.image} (make image)", file=sys.stderr)
        return 2
    body = digit_png()
    workdir = Path(tempfile.mkdtemp(prefix="coldstart-", dir=args.workdir))
    try:
        starts = []
        for run in range(args.runs):
            starts.append(start_once(args.image, workdir, body))
            print(f"start {run + 1}: ready {starts[-1]['events']['ready (seen by a client)']:.2f} s, "
                  f"first answer {starts[-1]['events']['first answer']:.2f} s", flush=True)
        print_starts(starts, f"{args.image}, present on this machine")
        if not args.no_transfer:
            transfer(args.image, workdir, body)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
