"""The gateway's settings: every one a flag and an environment variable (the container's interface), and the
client credentials it requires."""
from __future__ import annotations

import argparse
import ipaddress
import os
import re
from pathlib import Path

import gateway
from serving.config import DEFAULT_CONFIG, ROOT

MIN_CREDENTIAL_LENGTH = 16  # a shorter shared secret is guessable; openssl rand -hex 32 gives 64 characters
CREDENTIAL_PATTERN = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII without spaces: it travels in a header
# A model name as TorchServe takes it; it is written into nginx.conf (the v2 metadata answers), so nothing else.
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def model_name(text: str) -> str:
    if not MODEL_NAME_PATTERN.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: a model name is letters, digits, '_', '.' and '-'")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=gateway.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add = parser.add_argument
    add("--state-dir", type=Path, default=Path(env("STATE_DIR", "/tmp/digits")),
        help="private runtime directory: configs, TorchServe's key file, sockets, logs (env STATE_DIR)")
    add("--model-store", type=Path, default=Path(env("MODEL_STORE", str(ROOT / "model_store"))),
        help="directory with the .mar archives (env MODEL_STORE)")
    add("--load-models", default=env("LOAD_MODELS", "digits.mar"), help="archives to load (env LOAD_MODELS)")
    add("--model", type=model_name, default=env("MODEL_NAME", "digits"),
        help="the model readiness waits for, and whose v2 metadata the gateway answers (env MODEL_NAME)")
    add("--address", default=env("GATEWAY_ADDRESS", "0.0.0.0"), help="gateway listen address (env GATEWAY_ADDRESS)")
    add("--port", type=int, default=int(env("GATEWAY_PORT", "8080")), help="REST + health (env GATEWAY_PORT)")
    add("--grpc-port", type=int, default=int(env("GATEWAY_GRPC_PORT", "7070")), help="gRPC (env GATEWAY_GRPC_PORT)")
    add("--metrics-address", default=env("METRICS_ADDRESS", "0.0.0.0"), help="env METRICS_ADDRESS")
    add("--metrics-port", type=int, default=int(env("METRICS_PORT", "8082")), help="Prometheus (env METRICS_PORT)")
    add("--internal-port-base", type=int, default=int(env("INTERNAL_PORT_BASE", "18080")),
        help="TorchServe on 127.0.0.1: REST base, management +1, metrics +2, gRPC +3/+4 (env INTERNAL_PORT_BASE)")
    add("--credential-file", type=Path, default=Path(env("DIGITS_CLIENT_TOKEN_FILE", "/run/secrets/digits/token")),
        help="client credentials, one per line (env DIGITS_CLIENT_TOKEN_FILE; DIGITS_CLIENT_TOKEN instead)")
    add("--no-client-credential", action="store_true",
        default=env("NO_CLIENT_CREDENTIAL", "") in ("1", "true", "yes"),
        help="ask clients for no credential; allowed only with a loopback --address and --metrics-address "
             "(env NO_CLIENT_CREDENTIAL=1)")
    add("--web-dir", type=Path, default=Path(env("WEB_DIR", str(ROOT / "web"))),
        help="the web page's files, served at / (env WEB_DIR)")
    add("--rate-limit", type=int, default=int(env("RATE_LIMIT", "200")),
        help="requests/s per client address before 429 (env RATE_LIMIT)")
    add("--rate-burst", type=int, default=int(env("RATE_BURST", "400")), help="burst above the rate (env RATE_BURST)")
    add("--drain-seconds", type=float, default=float(env("DRAIN_SECONDS", "5")),
        help="readiness is 503 this long after SIGTERM before the gateway closes its listeners (env DRAIN_SECONDS)")
    add("--workers", type=int, default=int(env("DIGITS_WORKERS", "0")),
        help="TorchServe workers for the model; 0: the archive's own minWorkers (env DIGITS_WORKERS)")
    add("--token-expiration-min", type=float, default=float(env("TOKEN_EXPIRATION_MIN", "0")),
        help="lifetime of TorchServe's keys, rotated at half of it; 0: config.properties' (env TOKEN_EXPIRATION_MIN)")
    add("--nginx-workers", type=int, default=int(env("NGINX_WORKERS", "1")), help="env NGINX_WORKERS")
    add("--access-log", choices=("off", "stdout"), default=env("ACCESS_LOG", "off"),
        help="one line per request on stdout (env ACCESS_LOG); off: per-request logging costs throughput")
    add("--config", type=Path, default=DEFAULT_CONFIG, help="TorchServe's config.properties")
    add("--start-timeout", type=float, default=float(env("START_TIMEOUT", "300")),
        help="seconds for TorchServe to get the model ready (env START_TIMEOUT)")
    return parser


def is_loopback(address: str) -> bool:
    """True for an IP literal on the loopback network (127.0.0.0/8, ::1). A host name is not trusted: it resolves
    to whatever the resolver says."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_no_credential_mode(args) -> None:
    """--no-client-credential: clients then reach the model with no secret at all, so the gateway must be reachable
    from this machine only. A loopback listener is: packets to 127.0.0.0/8 never leave the host, and a remote
    machine cannot address it."""
    for flag, address in (("--address", args.address), ("--metrics-address", args.metrics_address)):
        if not is_loopback(address):
            raise SystemExit(f"gateway: --no-client-credential serves anyone who reaches the gateway, so it listens "
                             f"on a loopback address only (127.0.0.1 or ::1); {flag} is {address}. Use "
                             f"{flag} 127.0.0.1, or give clients a credential (DIGITS_CLIENT_TOKEN)")


def parse_credentials(text: str, source: str) -> list[str]:
    """The credentials in a file's text, one per line (blank lines ignored). ValueError names what is wrong."""
    credentials = [line.strip() for line in text.splitlines() if line.strip()]
    if not credentials:
        raise ValueError(f"{source} holds no credential")
    for credential in credentials:
        if len(credential) < MIN_CREDENTIAL_LENGTH or not CREDENTIAL_PATTERN.match(credential):
            raise ValueError(f"a credential in {source} is shorter than {MIN_CREDENTIAL_LENGTH} characters or "
                             "holds spaces or non-ASCII characters (make one with: openssl rand -hex 32)")
    return credentials


def credential_source(args) -> Path | None:
    """The credential file the gateway reads (and watches: supervisor.CredentialWatch), or None when the credential
    comes from DIGITS_CLIENT_TOKEN or there is none (--no-client-credential)."""
    if args.no_client_credential or not args.credential_file.is_file():
        return None
    return args.credential_file


def read_credentials(args) -> list[str]:
    """The client credentials: the file (a mounted secret) if it exists, else DIGITS_CLIENT_TOKEN. None with
    --no-client-credential (on loopback only)."""
    if args.no_client_credential:
        check_no_credential_mode(args)
        return []
    if args.credential_file.is_file():
        text, source = args.credential_file.read_text(), str(args.credential_file)
    elif os.environ.get("DIGITS_CLIENT_TOKEN"):
        text, source = os.environ["DIGITS_CLIENT_TOKEN"], "DIGITS_CLIENT_TOKEN"
    else:
        raise SystemExit(f"gateway: no client credential: mount one at {args.credential_file} "
                         "(DIGITS_CLIENT_TOKEN_FILE) or set DIGITS_CLIENT_TOKEN")
    try:
        return parse_credentials(text, source)
    except ValueError as error:
        raise SystemExit(f"gateway: {error}") from None
