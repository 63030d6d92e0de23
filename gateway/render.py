"""What the gateway writes before it starts anything: TorchServe's config.properties and nginx.conf."""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from serving.config import ROOT, Ports

GATEWAY_DIR = ROOT / "gateway"


def torchserve_properties(config: Path, token_expiration_min: float) -> str:
    """config.properties as shipped, with token_expiration_min replaced when asked (TorchServe reads that key from
    the file only, never from TS_TOKEN_EXPIRATION_MIN)."""
    text = config.read_text()
    if token_expiration_min > 0:
        text = re.sub(r"(?m)^token_expiration_min=.*$", f"token_expiration_min={token_expiration_min:g}", text)
    return text


def max_body_bytes(properties_text: str) -> int:
    found = re.search(r"(?m)^max_request_size=(\d+)", properties_text)
    return int(found.group(1)) if found else 6553500


def nginx_temp_dir(state: Path) -> Path:
    """Where nginx writes request bodies larger than its 1 MB memory buffer (a photo dropped on the page).

    Started as root, nginx runs its workers as `nobody`, which cannot enter the state directory (root, 0700: it holds
    the client credentials and TorchServe's keys), nor perhaps the directories above it: a body written there
    failed with EACCES, a 500 for any image over 1 MB. So as root the temporary files live in a directory of their
    own in the system's temp directory, named after the state directory (the supervisor makes it 0711 and removes
    it on exit; nginx makes each subdirectory its workers' own, 0700). Started as any other user, the workers are
    that user and the state directory holds them."""
    if os.geteuid() != 0:
        return state / "nginx"
    return Path(tempfile.gettempdir()) / f"digits-nginx-{hashlib.sha256(str(state).encode()).hexdigest()[:12]}"


def render_nginx(args, state: Path, body_bytes: int) -> str:
    torchserve = Ports.block(args.internal_port_base)
    values = {
        "NGINX_WORKERS": str(args.nginx_workers),
        "STATE_DIR": str(state),
        "NGINX_TEMP": str(nginx_temp_dir(state)),
        "GATEWAY_DIR": str(GATEWAY_DIR),
        "ACCESS_LOG": "/dev/stdout requests" if args.access_log == "stdout" else "off",
        "MAX_BODY_BYTES": str(body_bytes),
        "RATE_LIMIT": str(args.rate_limit),
        "RATE_BURST": str(args.rate_burst),
        "TS_INFERENCE_PORT": str(torchserve.inference),
        "TS_METRICS_PORT": str(torchserve.metrics),
        "TS_GRPC_PORT": str(torchserve.grpc_inference),
        "GATEWAY_ADDRESS": args.address,
        "GATEWAY_PORT": str(args.port),
        "GATEWAY_GRPC_PORT": str(args.grpc_port),
        "METRICS_ADDRESS": args.metrics_address,
        "METRICS_PORT": str(args.metrics_port),
        "WEB_DIR": str(args.web_dir.resolve()),
        "REQUIRE_CREDENTIAL": "false" if args.no_client_credential else "true",
        "MODEL_NAME": args.model,
    }
    text = (GATEWAY_DIR / "nginx.conf.template").read_text()
    text = re.sub(r"\{\{([A-Z_]+)\}\}", lambda match: values[match.group(1)], text)
    return text


def write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def page_url(address: str, port: int) -> str:
    """Where a browser on this machine opens the page (a wildcard address listens on loopback too)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
