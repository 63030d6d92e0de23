"""Heavy prerequisites from Debian's packages (nginx, Docker, Prometheus, Chromium): installed by the tests when
they can (as root), otherwise skipped with the reason -- and under CI=true never skipped: a missing one fails."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str):
    """Skip with the reason, or fail under CI=true (nothing skips in CI)."""
    if CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def present(path_or_command: str) -> bool:
    return Path(path_or_command).exists() if path_or_command.startswith("/") else shutil.which(path_or_command) is not None


def ensure_packages(needs: dict[str, str]) -> None:
    """{binary, command or file: Debian package}: apt-get install the packages of whatever is missing."""
    missing = sorted({package for thing, package in needs.items() if not present(thing)})
    if not missing:
        return
    if os.geteuid() != 0:
        unavailable(f"needs Debian packages {', '.join(missing)} (apt-get install, as root)")
    environ = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    result = subprocess.run(command, capture_output=True, text=True, env=environ)
    if result.returncode != 0:  # a stale package list: refresh it once
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=environ)
        result = subprocess.run(command, capture_output=True, text=True, env=environ)
    still = sorted({package for thing, package in needs.items() if not present(thing)})
    if result.returncode != 0 or still:
        unavailable(f"apt-get install {' '.join(missing)} failed: {result.stderr.strip()[-400:]}")


NGINX = {"/usr/sbin/nginx": "nginx", "/usr/lib/nginx/modules/ngx_http_lua_module.so": "libnginx-mod-http-lua"}
