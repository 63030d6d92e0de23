"""Where a worker's time goes: py-spy samples of one worker process, counted per function."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def function_of(frame: str) -> str:
    """py-spy's raw frame 'name (path/file.py:line)' -> 'name (file.py)': lines of one function counted once."""
    name, _, location = frame.partition(" (")
    return f"{name} ({location.rsplit('/', 1)[-1].split(':')[0]})"


def profile_worker(pid: int, seconds: float, raw_path: Path) -> list[dict]:
    """Sample a worker with py-spy (non-blocking) and return the functions holding the most samples, inclusive."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    subprocess.run([py_spy, "record", "--nonblocking", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                    "--rate", "200", "--format", "raw", "--output", str(raw_path)],
                   check=True, capture_output=True, timeout=seconds + 60)
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        functions = {function_of(frame) for frame in stack.split(";")}
        for function in functions:
            inclusive[function] = inclusive.get(function, 0) + int(count)
    ranked = sorted(inclusive.items(), key=lambda item: -item[1])
    return [{"function": name, "share": count / total} for name, count in ranked[:25]] if total else []
