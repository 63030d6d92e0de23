"""Heavy prerequisites from Debian's packages (nginx, Docker, Prometheus, Chromium): installed by the tests when
they can (as root), otherwise skipped with the reason -- and under CI=true never skipped: a missing one fails.

What the collected tests need is installed in one apt-get run in the background as soon as collection ends
(`install_in_background`), while the unit tests run; a fixture that needs a package waits for that run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

CI = os.environ.get("CI", "").lower() == "true"

NGINX = {"/usr/sbin/nginx": "nginx", "/usr/lib/nginx/modules/ngx_http_lua_module.so": "libnginx-mod-http-lua"}
DOCKER = {"dockerd": "docker.io", "docker": "docker.io", "debootstrap": "debootstrap"}
PROMETHEUS = {"prometheus": "prometheus", "promtool": "prometheus"}
CHROMIUM = {"/usr/bin/chromium": "chromium", "/usr/bin/chromedriver": "chromium-driver"}

_apt = threading.Lock()  # one apt-get at a time in this process (dpkg's own lock would refuse a second)
_background: threading.Thread | None = None


def unavailable(reason: str):
    """Skip with the reason, or fail under CI=true (nothing skips in CI)."""
    if CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def present(path_or_command: str) -> bool:
    return Path(path_or_command).exists() if path_or_command.startswith("/") else shutil.which(path_or_command) is not None


def missing_packages(needs: dict[str, str]) -> list[str]:
    return sorted({package for thing, package in needs.items() if not present(thing)})


def apt_install(packages: list[str]) -> str | None:
    """apt-get install, once more after refreshing the package lists if it fails; None, or apt's complaint."""
    environ = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Another apt on this machine (not ours) holds dpkg's lock: wait for it rather than fail.
    command = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q", "--no-install-recommends", *packages]
    with _apt:
        result = subprocess.run(command, capture_output=True, text=True, env=environ)
        if result.returncode != 0:  # a stale package list: refresh it once
            subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-q"], capture_output=True,
                           env=environ)
            result = subprocess.run(command, capture_output=True, text=True, env=environ)
    return None if result.returncode == 0 else result.stderr.strip()[-400:]


def ensure_packages(needs: dict[str, str]) -> None:
    """{binary, command or file: Debian package}: apt-get install the packages of whatever is missing."""
    if _background is not None:
        _background.join()  # the collection-time install may be bringing them right now
    missing = missing_packages(needs)
    if not missing:
        return
    if os.geteuid() != 0:
        unavailable(f"needs Debian packages {', '.join(missing)} (apt-get install, as root)")
    complaint = apt_install(missing)
    still = missing_packages(needs)
    if complaint or still:
        unavailable(f"apt-get install {' '.join(missing)} failed: {complaint or 'still missing: ' + ', '.join(still)}")


def install_in_background(needs: dict[str, str]) -> threading.Thread | None:
    """Start installing the packages of whatever in `needs` is missing, in one apt-get run (as root only; a failure
    is reported by ensure_packages when a test needs the package)."""
    global _background
    missing = missing_packages(needs)
    if not missing or os.geteuid() != 0:
        return None
    _background = threading.Thread(target=apt_install, args=(missing,), name="apt-get install", daemon=True)
    _background.start()
    return _background
