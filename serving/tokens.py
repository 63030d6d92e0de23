"""TorchServe's key_file.json: the inference, management and API keys of a server started with token auth on."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

TOKEN_ERROR_TYPE = "InvalidKeyException"  # TorchServe's error type for a missing or wrong token (REST: HTTP 400)
TOKEN_ERROR_TEXT = "Token Authorization failed"  # the same refusal over gRPC (PERMISSION_DENIED)


class TokenFileError(SystemExit):
    """key_file.json is missing, half-written or lacks the key: a CLI exits with the message."""


def read_token(key_file: Path, kind: str = "inference") -> str:
    """The inference, management or API key from TorchServe's key_file.json."""
    try:
        keys = json.loads(Path(key_file).read_text())
    except FileNotFoundError:
        raise TokenFileError(
            f"token file {key_file} not found: is TorchServe running (scripts/serve.sh start)? "
            "It writes the file into the directory it was started from."
        ) from None
    except ValueError as error:
        raise TokenFileError(f"token file {key_file} is not TorchServe's key file (invalid JSON: {error})") from None
    try:
        return keys[kind]["key"]
    except (KeyError, TypeError):
        raise TokenFileError(f"token file {key_file} has no {kind!r} key") from None


def key_expiry(key_file: Path, kind: str) -> float:
    """When TorchServe's key of this kind expires, as a Unix time (key_file.json says, e.g. 2026-11-29T15:16:06Z)."""
    stamp = json.loads(Path(key_file).read_text())[kind]["expiration time"]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()


def read_new_key(key_file: Path, kind: str, old: str, timeout: float = 5.0) -> str:
    """The key TorchServe wrote after a rotation (it rewrites the file in place: retry while half-written)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            key = read_token(key_file, kind)
            if key != old:
                return key
        except TokenFileError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"TorchServe did not write a new {kind} key within {timeout:.0f} s")
        time.sleep(0.005)
