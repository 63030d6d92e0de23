"""gateway/render.py: the configs the gateway writes, and nginx's own check of the rendered nginx.conf."""
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from gateway import render
from tests.support import ROOT
from tests.support.gateways import gateway_args
from tests.support.system import NGINX, ensure_packages

PACKAGES = NGINX  # installed in the background from collection on (tests/conftest.py)


def test_token_expiration_is_written_into_torchserves_config():
    text = render.torchserve_properties(ROOT / "config.properties", 1.5)
    assert re.findall(r"(?m)^token_expiration_min=.*$", text) == ["token_expiration_min=1.5"]
    assert render.torchserve_properties(ROOT / "config.properties", 0) == (ROOT / "config.properties").read_text()
    assert render.max_body_bytes(text) == 6553500


def test_rendered_nginx_config_passes_nginx_t(tmp_path, monkeypatch):
    """Every placeholder filled, and nginx itself (with the Lua module) accepts the result."""
    ensure_packages(NGINX)
    monkeypatch.setattr(render.os, "geteuid", lambda: 1000)  # temporary files in the state directory: nothing in /tmp
    args = gateway_args(tmp_path, "--port", "18000", "--grpc-port", "18001", "--metrics-port", "18002",
                    "--access-log", "stdout", "--rate-limit", "7")
    state = tmp_path / "state"
    (state / "nginx").mkdir(parents=True)
    (state / "credentials").write_text("a-credential-for-the-check\n")
    text = render.render_nginx(args, state, 6553500)
    assert "{{" not in text and "rate=7r/s" in text and "listen 0.0.0.0:18001 http2" in text
    (state / "nginx.conf").write_text(text)
    result = subprocess.run(["/usr/sbin/nginx", "-t", "-c", str(state / "nginx.conf"), "-p", str(state / "nginx"),
                             "-e", "stderr"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_rendered_config_without_a_credential_passes_nginx_t(tmp_path, monkeypatch):
    """--no-client-credential: no credentials file at all, and nginx (running init_by_lua) accepts the config."""
    ensure_packages(NGINX)
    monkeypatch.setattr(render.os, "geteuid", lambda: 1000)
    args = gateway_args(tmp_path, "--no-client-credential", "--address", "127.0.0.1", "--metrics-address", "127.0.0.1",
                    "--port", "18000", "--grpc-port", "18001", "--metrics-port", "18002")
    state = tmp_path / "state"
    (state / "nginx").mkdir(parents=True)
    text = render.render_nginx(args, state, 6553500)
    assert f'load_credentials("{state}/credentials", false)' in text
    assert f"root {ROOT / 'web'};" in text
    (state / "nginx.conf").write_text(text)
    result = subprocess.run(["/usr/sbin/nginx", "-t", "-c", str(state / "nginx.conf"), "-p", str(state / "nginx"),
                             "-e", "stderr"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    with_credential = render.render_nginx(gateway_args(tmp_path), state, 6553500)
    assert f'load_credentials("{state}/credentials", true)' in with_credential


@pytest.mark.parametrize("address, url", [("127.0.0.1", "http://127.0.0.1:8090/"), ("0.0.0.0", "http://127.0.0.1:8090/"),
                                          ("::1", "http://[::1]:8090/")])
def test_the_page_url_printed_when_ready(address, url):
    assert render.page_url(address, 8090) == url


def test_nginx_writes_large_bodies_where_its_workers_can(tmp_path, monkeypatch):
    """As root nginx's workers are `nobody`, who cannot enter the state directory (root, 0700) or a private one
    above it: their temporary files go in the system's temp directory, one directory per state directory. As any
    other user the workers are that user, and the state directory holds them."""
    state = tmp_path / "state"
    monkeypatch.setattr(render.os, "geteuid", lambda: 0)
    temp = render.nginx_temp_dir(state)
    assert temp.parent == Path(tempfile.gettempdir()) and temp.name.startswith("digits-nginx-")
    assert render.nginx_temp_dir(tmp_path / "other") != temp
    text = render.render_nginx(gateway_args(tmp_path), state, 6553500)
    assert f"client_body_temp_path {temp}/body;" in text and f"proxy_temp_path {temp}/proxy;" in text
    monkeypatch.setattr(render.os, "geteuid", lambda: 1000)
    assert render.nginx_temp_dir(state) == state / "nginx"
    assert f"client_body_temp_path {state}/nginx/body;" in render.render_nginx(gateway_args(tmp_path), state, 6553500)
