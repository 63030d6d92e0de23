"""The benchmark's peer: what a user might write instead of TorchServe. A plain FastAPI + uvicorn server.

    python -m benchmarks.peer --archive model_store/digits.mar --port 8090 --token-file peer_token.txt

Same model and same preprocessing as the bundle: it unpacks the .mar, checks the weights' SHA-256, loads them and
optimizes them for CPU exactly as the handler does (handler/digit_handler.py's functions), and reads each request
with the handler's parse_request and preprocess, so it accepts and refuses the same inputs and answers the same
JSON. What it does not have is what TorchServe adds: no dynamic batching (batch 1), no worker supervision, no
management API, no metrics. `--workers` uvicorn processes (default 2, one per core here), each with one torch thread; every request
needs `Authorization: Bearer <the token in --token-file>`.

POST /predictions/<model> answers like TorchServe's handler (200, or 400/413 with {"code", "type", "message"});
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
    import torch

    from handler.digit_handler import (DEFAULT_TOPK, DIGEST_FILE, InputError, InputTooLarge, format_error,
                                       format_ranked, load_labels, load_model, optimize_for_cpu, parse_request,
                                       predict, preprocess, verify_weights)
    from model.checkpoint import training_resolution

    torch.set_num_threads(int(os.environ.get(ENV_THREADS, "1")))
    model_dir = Path(os.environ[ENV_MODEL_DIR])
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    weights = model_dir / manifest["model"]["serializedFile"]
    verify_weights(str(weights), str(model_dir / DIGEST_FILE))
    model, checkpoint = load_model(str(weights), torch.device("cpu"))
    model = optimize_for_cpu(model)
    labels = load_labels(str(model_dir), checkpoint["arch"]["num_classes"])
    resolution = training_resolution(checkpoint)
    expected = f"Bearer {Path(os.environ[ENV_TOKEN_FILE]).read_text().strip()}".encode()

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    def error(code: int, message: str, kind: str) -> Response:
        return JSONResponse(format_error(code, message, kind), status_code=code)

    @app.get("/ping")
    async def ping():
        return {"status": "Healthy"}

    @app.post("/predictions/{name}")
    async def predictions(name: str, request: Request):
        # The work runs inline on the event loop: one request at a time per worker process, like batch 1.
        if not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
            return error(401, "missing or wrong token", "Unauthorized")
        if name != manifest["model"]["modelName"]:
            return error(404, f"model {name!r} not found", "ModelNotFound")
        try:
            decoded = parse_request({"body": await request.body()}, DEFAULT_TOPK, len(labels))
            inputs, (refusal,) = preprocess([decoded], resolution)
        except InputTooLarge as refused:
            return error(413, str(refused), "InputTooLarge")
        except InputError as refused:
            return error(400, str(refused), "InputError")
        if refusal is not None:
            return error(400, str(refusal), "InputError")
        values, indices = torch.topk(predict(model, inputs), decoded.topk)
        answers = [format_ranked(row_values, row_indices, labels)
                   for row_values, row_indices in zip(values.tolist(), indices.tolist())]
        body = {"predictions": answers} if decoded.many else answers[0]
        return Response(json.dumps(body), media_type="application/json")

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


