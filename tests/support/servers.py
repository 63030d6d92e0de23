"""What only tests need of a TorchServe that serving/launch.py started: its logs once they have settled, and a wait
until given lines are in them."""
from __future__ import annotations

import time

from serving.launch import Server


def settled_logs(server: Server, quiet: float = 1.0, timeout: float = 15.0) -> dict[str, str]:
    """The log files' text once none has grown for `quiet` seconds: TorchServe writes them through log4j2's async
    logger and the workers' stdout readers, so a line can land a moment after the event behind it."""
    def sizes() -> dict:
        return {path: path.stat().st_size for path in server.logs.glob("*.log")}

    deadline = time.monotonic() + timeout
    last, stable_since = sizes(), time.monotonic()
    while time.monotonic() - stable_since < quiet and time.monotonic() < deadline:
        time.sleep(0.1)
        now = sizes()
        if now != last:
            last, stable_since = now, time.monotonic()
    return {path.name: path.read_text(errors="replace") for path in last}


def wait_for_log(server: Server, texts: list[str], timeout: float) -> list[str]:
    """Until every one of `texts` is in the server's logs or console (or `timeout` seconds pass): the texts still
    missing."""
    deadline = time.monotonic() + timeout
    while True:
        found = "\n".join(server.log_texts().values())
        missing = [text for text in texts if text not in found]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.2)
