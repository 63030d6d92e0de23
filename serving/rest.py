"""TorchServe over HTTP: one call answered as (status, JSON), and a prediction for one file's bytes."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from serving.tokens import TOKEN_ERROR_TYPE


class TokenRefused(Exception):
    """The server refused the bearer token (TorchServe's InvalidKeyException)."""


def http_json(url: str, token: str | None, timeout: float = 5.0, method: str = "GET", data: bytes | None = None):
    """(status, parsed JSON or text) for one HTTP call; raises OSError when nothing listens."""
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("utf-8", "replace")


def classify(session, url: str, token: str, path: Path, timeout: float) -> tuple[int, dict]:
    """POST one file's bytes with a requests.Session; (HTTP status, JSON answer). TokenRefused if the token was."""
    response = session.post(
        url,
        data=Path(path).read_bytes(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
        timeout=timeout,
    )
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text.strip()}
    if isinstance(body, dict) and body.get("type") == TOKEN_ERROR_TYPE:
        raise TokenRefused(body.get("message", "token refused"))
    return response.status_code, body
