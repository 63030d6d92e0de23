"""The benchmark's peer: what a user might write instead of TorchServe. A plain FastAPI + uvicorn server over the
bundle's predictor, batch 1.

    python -m benchmarks.peer --archive model_store/digits.mar --port 8090 --token-file peer_token.txt

The same code as a TorchServe worker, one request at a time: it unpacks the .mar, sets up handler/predictor.py's
Predictor from it (the weights' SHA-256 checked, the network optimised for the CPU, the archive's handler settings),
reads each request with handler/wire.py's reader and answers it with handler/answers.py, so it accepts and refuses
the same inputs and answers the same bytes. What it does not have is what TorchServe adds: no dynamic batching
(batch 1), no worker supervision, no management API, no metrics. `--workers` uvicorn processes (default 2, one per
core here), each with one torch thread; every request needs `Authorization: Bearer <the token in --token-file>`.

POST /predictions/<model> answers as TorchServe's handler does (200, or 400/413 with {"code", "type", "message"});
401 without the token; GET /ping answers {"status": "Healthy"}. The benchmark (python -m benchmarks) starts it
and measures it with the same wrk settings as TorchServe, so every figure has a ratio beside it.
"""
from __future__ import annotations

import argparse
import hmac
import json
import os
import sys
import tempfile
from pathlib import Path

from fastapi import FastAPI, Request  # module level: FastAPI resolves the endpoints' annotations here
from fastapi.responses import JSONResponse, Response

from serving.archive import extract


ENV_MODEL_DIR = "DIGITS_PEER_MODEL_DIR"  # the unpacked .mar (set by main for the uvicorn workers)
ENV_TOKEN_FILE = "DIGITS_PEER_TOKEN_FILE"
ENV_THREADS = "DIGITS_PEER_TORCH_THREADS"


def create_app():
    """The FastAPI application, configured from the environment (uvicorn's workers import it by name)."""
    import dataclasses

    import torch
    import yaml

    from handler import answers, metrics, wire
    from handler.predictor import Predictor, Settings

    model_dir = Path(os.environ[ENV_MODEL_DIR])
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())["model"]
    config = yaml.safe_load((model_dir / manifest["configFile"]).read_text()) if "configFile" in manifest else {}
    settings = Settings.from_mapping((config or {}).get("handler"), metrics.SETTINGS)  # it sends no metrics
    predictor = Predictor()
    predictor.setup(str(model_dir), torch.device("cpu"),
                    dataclasses.replace(settings, torch_threads=int(os.environ.get(ENV_THREADS, "1"))),
                    manifest["serializedFile"])
    name, version = manifest["modelName"], manifest.get("modelVersion", "")
    expected = f"Bearer {Path(os.environ[ENV_TOKEN_FILE]).read_text().strip()}".encode()

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    def error(code: int, message: str, kind: str) -> Response:
        return JSONResponse({"code": code, "type": kind, "message": message}, status_code=code)

    @app.get("/ping")
    async def ping():
        return {"status": "Healthy"}

    @app.post("/predictions/{model}")
    async def predictions(model: str, request: Request):
        # The work runs inline on the event loop: one request at a time per worker process, like batch 1.
        if not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
            return error(401, "missing or wrong token", "Unauthorized")
        if model != name:
            return error(404, f"model {model!r} not found", "ModelNotFound")
        read = wire.read({"body": await request.body()}, predictor.limits)
        reply = answers.reply(read, read.refusal or predictor.predict([read.request])[0], name, version)
        return Response(reply.body, status_code=reply.status,
                        media_type="application/json" if reply.binary_length is None else "application/octet-stream")

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=Path("model_store/digits.mar"), help="the .mar to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--token-file", type=Path, required=True, help="file holding the bearer token to require")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads per worker")
    args = parser.parse_args(argv)
    if not args.archive.is_file():
        print(f"benchmarks.peer: {args.archive} not found; run `make package` first", file=sys.stderr)
        return 2
    if not args.token_file.is_file() or not args.token_file.read_text().strip():
        print(f"benchmarks.peer: {args.token_file} must hold a token", file=sys.stderr)
        return 2
    import uvicorn

    with tempfile.TemporaryDirectory(prefix="digits-peer-") as unpacked:
        os.environ[ENV_MODEL_DIR] = str(extract(args.archive, Path(unpacked)))
        os.environ[ENV_TOKEN_FILE] = str(args.token_file.resolve())
        os.environ[ENV_THREADS] = str(args.torch_threads)
        root = str(Path(__file__).resolve().parents[2])  # where uvicorn's worker processes import the app from
        uvicorn.run("benchmarks.peer.server:create_app", factory=True, host=args.host, port=args.port,
                    workers=args.workers, log_level="warning", access_log=False, app_dir=root)
    return 0


