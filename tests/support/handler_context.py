"""The handler under TorchServe's own Context, as a worker runs it, without a server: the directory TorchServe
unpacks a .mar into, the request headers it passes, a Context with the bundle's metrics.yaml, a batch handled."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

import train
from handler import predictor
from tests.support import ROOT
from tests.support.corpus import metric_row

# What TorchServe gives the worker for a REST request (its HTTP headers, plus `url_path` and `explain`, which its
# frontend adds for /predictions and /explanations), for a REST request to an Open Inference Protocol path
# (/v2/models/<model>/infer: `explain` only) and for a gRPC one (only input fields).
REST_REQUEST = {"Host": "127.0.0.1:8080", "Authorization": "Bearer token", "url_path": "", "explain": "False",
                "body": {"content-type": "image/png"}}
V2_REQUEST = {"Host": "127.0.0.1:8080", "Authorization": "Bearer token", "explain": "False",
              "body": {"content-type": "application/json"}}
GRPC_REQUEST = {"data": {"content-type": None}}


def unpacked_model_dir(artifacts: Path, directory: Path) -> Path:
    """What TorchServe unpacks from the .mar, as far as the handler reads it."""
    shutil.copy(artifacts / train.WEIGHTS_FILE, directory)
    shutil.copy(artifacts / "index_to_name.json", directory)
    digest = predictor.file_sha256(str(directory / train.WEIGHTS_FILE))
    (directory / predictor.DIGEST_FILE).write_text(f"{digest}  {train.WEIGHTS_FILE}\n")
    return directory


def make_context(model_dir, batch_size: int, yaml_config=None, requests=None) -> Context:
    context = Context(
        model_name="digits",
        model_dir=str(model_dir),
        manifest={"model": {"serializedFile": train.WEIGHTS_FILE, "modelName": "digits"}},
        batch_size=batch_size,
        gpu=None,
        mms_version="0.12.0",
        # metrics_seconds 0: a handler made here sends each batch's metrics at once, never from its thread later
        # (into another test's log capture).
        model_yaml_config=yaml_config if yaml_config is not None else {"handler": {"topk": 3, "metrics_seconds": 0}},
    )
    context.request_processor = [RequestProcessor(dict(properties)) for properties in requests or [REST_REQUEST] * batch_size]
    # TorchServe's own metrics cache, with the bundle's metrics.yaml, as a worker has it.
    metrics = MetricsCacheYamlImpl(config_file_path=str(ROOT / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.set_request_ids({idx: f"request-{idx}" for idx in range(batch_size)})
    context.metrics = metrics
    return context


def run_batch(handler, model_dir, rows):
    context = make_context(model_dir, len(rows))
    results = handler.handle(rows, context)
    statuses = [context.get_response_status(idx)[0] for idx in range(len(rows))]
    return [json.loads(result) for result in results], statuses, context


def emitted(caplog) -> list[tuple[str, float, dict]]:
    """The metric rows written to the log records pytest captured."""
    return [row for row in map(metric_row, (record.getMessage() for record in caplog.records)) if row is not None]
