"""gateway/settings.py: the client credentials it requires (or, on loopback only, does not), and a refusal that stops
the whole program before it starts anything."""
import re
import subprocess
import sys

import pytest

from gateway import settings
from tests.support import ROOT
from tests.support.gateways import gateway_args


def test_a_credential_file_with_one_per_line(tmp_path, monkeypatch):
    monkeypatch.delenv("DIGITS_CLIENT_TOKEN", raising=False)
    path = tmp_path / "token"
    path.write_text("first-credential-0123456789\n\n  second-credential-0123456789  \n")
    assert settings.read_credentials(gateway_args(tmp_path, "--credential-file", str(path))) == [
        "first-credential-0123456789", "second-credential-0123456789"]


def test_the_environment_variable_when_no_file_is_mounted(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITS_CLIENT_TOKEN", "from-the-environment-0123")
    assert settings.read_credentials(gateway_args(tmp_path, "--credential-file", str(tmp_path / "absent"))) == [
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
        settings.read_credentials(gateway_args(tmp_path, "--credential-file", str(path)))


def test_refusing_to_start_exits_2_with_the_reason(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gateway", "--state-dir", str(tmp_path),
                             "--credential-file", str(tmp_path / "absent")],
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and "no client credential" in result.stderr


@pytest.mark.parametrize("flag", ["--address", "--metrics-address"])
@pytest.mark.parametrize("address", ["0.0.0.0", "192.168.1.20", "::", "localhost"])
def test_no_client_credential_is_refused_off_loopback(tmp_path, monkeypatch, flag, address):
    """Without a credential anyone who reaches the gateway uses the model: only a loopback listener is allowed
    (a host name is refused too: it resolves to whatever the resolver says)."""
    monkeypatch.setenv("DIGITS_CLIENT_TOKEN", "a-credential-that-must-not-matter")
    argv = ["--no-client-credential", "--address", "127.0.0.1", "--metrics-address", "127.0.0.1", flag, address]
    with pytest.raises(SystemExit, match=f"loopback address only.*{flag} is {re.escape(address)}"):
        settings.read_credentials(gateway_args(tmp_path, *argv))


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1"])
def test_no_client_credential_on_loopback_needs_none(tmp_path, monkeypatch, address):
    monkeypatch.delenv("DIGITS_CLIENT_TOKEN", raising=False)
    args = gateway_args(tmp_path, "--no-client-credential", "--address", address, "--metrics-address", "127.0.0.1",
                    "--credential-file", str(tmp_path / "absent"))
    assert settings.read_credentials(args) == []


def test_no_client_credential_off_loopback_exits_2_with_the_reason(tmp_path):
    """The whole program refuses before it starts anything (the container's default address is 0.0.0.0)."""
    result = subprocess.run([sys.executable, "-m", "gateway", "--state-dir", str(tmp_path),
                             "--no-client-credential"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "GATEWAY_ADDRESS": "0.0.0.0"}, cwd=ROOT,
                            timeout=60)
    assert result.returncode == 2, result.stderr
    assert "loopback address only" in result.stderr and "--address is 0.0.0.0" in result.stderr
    assert not (tmp_path / "nginx.conf").exists()


def test_the_environment_can_ask_for_no_credential(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_CLIENT_CREDENTIAL", "1")
    assert gateway_args(tmp_path).no_client_credential
    monkeypatch.setenv("NO_CLIENT_CREDENTIAL", "")
    assert not gateway_args(tmp_path).no_client_credential
