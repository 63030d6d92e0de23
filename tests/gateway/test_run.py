"""gateway/run.py's pure parts: credentials, the configs it writes, and nginx's own check of the rendered config."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.system import NGINX, ensure_packages

PACKAGES = NGINX  # installed in the background from collection on (tests/conftest.py)

def load_run_module():
    spec = importlib.util.spec_from_file_location("gateway_run", ROOT / "gateway" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = load_run_module()  # gateway/run.py: a script, not a package module


def args_for(tmp_path, *argv: str):
    return run.build_parser().parse_args(["--state-dir", str(tmp_path / "state"), *argv])


def test_a_credential_file_with_one_per_line(tmp_path, monkeypatch):
    monkeypatch.delenv("DIGITS_CLIENT_TOKEN", raising=False)
    path = tmp_path / "token"
    path.write_text("first-credential-0123456789\n\n  second-credential-0123456789  \n")
    assert run.read_credentials(args_for(tmp_path, "--credential-file", str(path))) == [
        "first-credential-0123456789", "second-credential-0123456789"]


def test_the_environment_variable_when_no_file_is_mounted(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITS_CLIENT_TOKEN", "from-the-environment-0123")
    assert run.read_credentials(args_for(tmp_path, "--credential-file", str(tmp_path / "absent"))) == [
        "from-the-environment-0123"]


@pytest.mark.parametrize("content, words", [
    (None, "no client credential"),
    ("", "holds no credential"),
    ("short\n", "shorter than 16 characters"),
    ("has a space in it 0123456789\n", "spaces"),
    ("naïve-credential-0123456789\n", "non-ASCII"),
])
def test_refuses_to_start_without_a_usable_credential(tmp_path, monkeypatch, content, words):
    monkeypatch.delenv("DIGITS_CLIENT_TOKEN", raising=False)
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit, match=words):
        run.read_credentials(args_for(tmp_path, "--credential-file", str(path)))


def test_refusing_to_start_exits_2_with_the_reason(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "gateway" / "run.py"), "--state-dir", str(tmp_path),
                             "--credential-file", str(tmp_path / "absent")],
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 2 and "no client credential" in result.stderr


def test_token_expiration_is_written_into_torchserves_config():
    text = run.torchserve_properties(ROOT / "config.properties", 1.5)
    assert re.findall(r"(?m)^token_expiration_min=.*$", text) == ["token_expiration_min=1.5"]
    assert run.torchserve_properties(ROOT / "config.properties", 0) == (ROOT / "config.properties").read_text()
    assert run.max_body_bytes(text) == 6553500


def test_rendered_nginx_config_passes_nginx_t(tmp_path):
    """Every placeholder filled, and nginx itself (with the Lua module) accepts the result."""
    ensure_packages(NGINX)
    args = args_for(tmp_path, "--port", "18000", "--grpc-port", "18001", "--metrics-port", "18002",
                    "--access-log", "stdout", "--rate-limit", "7")
    state = tmp_path / "state"
    (state / "nginx").mkdir(parents=True)
    (state / "credentials").write_text("a-credential-for-the-check\n")
    text = run.render_nginx(args, state, 6553500)
    assert "{{" not in text and "rate=7r/s" in text and "listen 0.0.0.0:18001 http2" in text
    (state / "nginx.conf").write_text(text)
    result = subprocess.run(["/usr/sbin/nginx", "-t", "-c", str(state / "nginx.conf"), "-p", str(state / "nginx"),
                             "-e", "stderr"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_key_expiry_reads_torchserves_timestamps(tmp_path):
    key_file = tmp_path / "key_file.json"
    key_file.write_text('{"inference": {"key": "k", "expiration time": "2026-11-29T15:16:06.123456789Z"}}')
    assert run.key_expiry(key_file, "inference") == pytest.approx(1795965366.123, abs=0.01)


def test_noexec_mounts_are_recognised():
    """Docker's --tmpfs is noexec unless told otherwise: run.py warns (TorchServe's workers would use TCP)."""
    mounts = Path("/proc/mounts").read_text()
    proc_options = next(line.split()[3] for line in mounts.splitlines() if line.split()[1] == "/proc")
    assert run.mounted_noexec(Path("/proc/self")) == ("noexec" in proc_options.split(","))


@pytest.mark.parametrize("flag", ["--address", "--metrics-address"])
@pytest.mark.parametrize("address", ["0.0.0.0", "192.168.1.20", "::", "localhost"])
def test_no_client_credential_is_refused_off_loopback(tmp_path, monkeypatch, flag, address):
    """Without a credential anyone who reaches the gateway uses the model: only a loopback listener is allowed
    (a host name is refused too: it resolves to whatever the resolver says)."""
    monkeypatch.setenv("DIGITS_CLIENT_TOKEN", "a-credential-that-must-not-matter")
    argv = ["--no-client-credential", "--address", "127.0.0.1", "--metrics-address", "127.0.0.1", flag, address]
    with pytest.raises(SystemExit, match=f"loopback address only.*{flag} is {re.escape(address)}"):
        run.read_credentials(args_for(tmp_path, *argv))


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1"])
def test_no_client_credential_on_loopback_needs_none(tmp_path, monkeypatch, address):
    monkeypatch.delenv("DIGITS_CLIENT_TOKEN", raising=False)
    args = args_for(tmp_path, "--no-client-credential", "--address", address, "--metrics-address", "127.0.0.1",
                    "--credential-file", str(tmp_path / "absent"))
    assert run.read_credentials(args) == []


def test_no_client_credential_off_loopback_exits_2_with_the_reason(tmp_path):
    """The whole program refuses before it starts anything (the container's default address is 0.0.0.0)."""
    result = subprocess.run([sys.executable, str(ROOT / "gateway" / "run.py"), "--state-dir", str(tmp_path),
                             "--no-client-credential"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "GATEWAY_ADDRESS": "0.0.0.0"}, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "loopback address only" in result.stderr and "--address is 0.0.0.0" in result.stderr
    assert not (tmp_path / "nginx.conf").exists()


def test_the_environment_can_ask_for_no_credential(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_CLIENT_CREDENTIAL", "1")
    assert args_for(tmp_path).no_client_credential
    monkeypatch.setenv("NO_CLIENT_CREDENTIAL", "")
    assert not args_for(tmp_path).no_client_credential


def test_rendered_config_without_a_credential_passes_nginx_t(tmp_path):
    """--no-client-credential: no credentials file at all, and nginx (running init_by_lua) accepts the config."""
    ensure_packages(NGINX)
    args = args_for(tmp_path, "--no-client-credential", "--address", "127.0.0.1", "--metrics-address", "127.0.0.1",
                    "--port", "18000", "--grpc-port", "18001", "--metrics-port", "18002")
    state = tmp_path / "state"
    (state / "nginx").mkdir(parents=True)
    text = run.render_nginx(args, state, 6553500)
    assert f'load_credentials("{state}/credentials", false)' in text
    assert f"root {ROOT / 'web'};" in text
    (state / "nginx.conf").write_text(text)
    result = subprocess.run(["/usr/sbin/nginx", "-t", "-c", str(state / "nginx.conf"), "-p", str(state / "nginx"),
                             "-e", "stderr"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    with_credential = run.render_nginx(args_for(tmp_path), state, 6553500)
    assert f'load_credentials("{state}/credentials", true)' in with_credential


@pytest.mark.parametrize("address, url", [("127.0.0.1", "http://127.0.0.1:8090/"), ("0.0.0.0", "http://127.0.0.1:8090/"),
                                          ("::1", "http://[::1]:8090/")])
def test_the_page_url_printed_when_ready(address, url):
    assert run.page_url(address, 8090) == url
