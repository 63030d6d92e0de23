"""What every client's command line shares: which server (config.properties), which token (TorchServe's key file,
or a bearer token of its own such as the gateway's client credential)."""
from __future__ import annotations

import argparse
from pathlib import Path

from serving.config import DEFAULT_CONFIG, KEY_FILE_NAME, Endpoints
from serving.tokens import read_token


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TorchServe config.properties")
    parser.add_argument("--key-file", type=Path, default=None,
                        help=f"TorchServe's key file (default: {KEY_FILE_NAME} in the repo root)")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="a file holding the bearer token itself, e.g. the gateway's client credential "
                        "(instead of TorchServe's inference key from --key-file)")


def client_token(args: argparse.Namespace, endpoints: Endpoints) -> str:
    """The bearer token the client sends: --token-file's, else TorchServe's inference key."""
    return args.token_file.read_text().strip() if args.token_file else read_token(endpoints.key_file, "inference")
