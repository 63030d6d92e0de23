"""REST client: classify image files with the running TorchServe, several at a time.

    python -m scripts.predict artifacts/samples/*.png
    python -m scripts.predict --json digit.png          # the server's full JSON answer per file

The inference token is read from TorchServe's key_file.json; the endpoint from config.properties.
Exit status: 0 all answered, 1 some file was refused (4xx/5xx), 2 server unreachable, 3 token refused.
"""
from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from serving.cli import add_client_arguments, client_token
from serving.config import DEFAULT_MODEL, Endpoints
from serving.rest import TokenRefused, classify


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Classify image files with the running TorchServe over REST.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("files", nargs="+", type=Path, help="image files (PNG, JPEG, BMP, GIF, WEBP)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name (add /VERSION for a version)")
    add_client_arguments(parser)
    parser.add_argument("--url", default=None, help="inference address (default: from --config)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--json", action="store_true", help="print the full JSON answer per file")
    args = parser.parse_args(argv)

    endpoints = Endpoints.from_config(args.config, args.key_file)
    url = f"{(args.url or endpoints.inference).rstrip('/')}/predictions/{args.model}"
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        print(f"predict.py: no such file: {', '.join(missing)}", file=sys.stderr)
        return 1
    token = client_token(args, endpoints)

    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(args.concurrency, 1))
    session.mount("http://", adapter)
    try:
        with ThreadPoolExecutor(max_workers=max(args.concurrency, 1)) as pool:
            answers = list(pool.map(lambda path: classify(session, url, token, path, args.timeout), args.files))
    except requests.ConnectionError:
        print(f"predict.py: TorchServe is not reachable at {url}: is it running? (scripts/serve.sh start)", file=sys.stderr)
        return 2
    except TokenRefused as error:
        print(f"predict.py: the server refused the token from {endpoints.key_file}: {error}", file=sys.stderr)
        return 3

    failed = 0
    width = max(len(str(path)) for path in args.files)
    for path, (status, body) in zip(args.files, answers):
        if args.json:
            print(json.dumps({"file": str(path), "status": status, "answer": body}))
        elif status == 200:
            print(f"{str(path):<{width}}  {body['label']:>6}  {body['probability']:.4f}")
        else:
            print(f"{str(path):<{width}}  error {status}: {body.get('message', body)}")
        failed += status != 200
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
