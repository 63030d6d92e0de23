"""What the gateway writes before it starts anything: TorchServe's config.properties and nginx.conf."""
from __future__ import annotations

import re
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


def render_nginx(args, state: Path, body_bytes: int) -> str:
    torchserve = Ports.block(args.internal_port_base)
    values = {
        "NGINX_WORKERS": str(args.nginx_workers),
        "STATE_DIR": str(state),
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
