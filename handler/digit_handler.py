"""TorchServe's adapter over the digit predictor: TorchServe's request rows and headers in, statuses and bodies out.

What a request means and what it gets back is decided once, for any server: handler/wire.py reads every format,
handler/predictor.py answers, handler/answers.py and handler/refusals.py turn answers and refusals into bodies and
statuses. This class only translates: it reads what TorchServe's frontend says of each request (REST or gRPC, an
Open Inference Protocol path, an explanation, the binary tensor extension, the client's request id), hands the batch
to the predictor, and sets each request's status and headers. A bad request gets its own 4xx (a bug 500), the good
ones in the same batch their answers, and the worker keeps running.

Over gRPC TorchServe 0.12.0 drops per-request statuses (it could only fail the whole batch): the same bodies arrive
with status OK, and clients recognise an error by its "code" field (a v2 request's by its "error" output).
"""
from __future__ import annotations

import logging
import os
import time

import torch
from ts.torch_handler.base_handler import BaseHandler

from handler import answers, metrics, open_inference, predictor, refusals, wire
from model import checkpoint, digit_cnn, preprocessing

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"
# Each answer says how many requests shared its forward pass: shows whether dynamic batching happens.
BATCH_SIZE_HEADER = "X-Batch-Size"
# ... and which forward pass it was ("<worker pid>-<batch number>"): answers sharing it were batched together.
BATCH_ID_HEADER = "X-Batch-Id"
# A client's X-Request-Id comes back in X-Client-Request-Id (TorchServe overwrites x-request-id with its own id): the
# answer says which request it answers. TorchServe 0.12.0 can write an answer twice on a keep-alive connection when
# a worker is scaled down (docs/serving.md, "Scaling down under load"); the copy then reads as the answer to the next
# request on that connection, and only this echo tells them apart.
REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_ECHO_HEADER = "X-Client-Request-Id"
# TorchServe's marker for the last message of a streamed answer. Its gRPC StreamPredictions RPC reads it from
# every answer and, when it is missing, fails with a NullPointerException that restarts the worker; REST treats
# its presence as a chunked stream. So gRPC answers carry it ("false": this is the only and last message) and
# REST answers never do.
STREAM_NEXT_HEADER = "ts_stream_next"
EXPLAIN_FIELD_VALUES = (b"true", b"True", "true", "True")


def header_value(request_properties: dict, name: str) -> str | None:
    """A REST request's header (any spelling of its name), or None."""
    name = name.lower()
    for key, value in request_properties.items():
        if isinstance(value, str) and key.lower() == name:
            return value
    return None


def came_over_grpc(request_properties: dict) -> bool:
    """True for a request from TorchServe's gRPC frontend, False for REST.

    TorchServe hands the worker a REST request's HTTP headers (str values; with token authorization on there is
    always at least Authorization) beside its input fields (dict values); a gRPC request carries input fields only.
    """
    return not any(isinstance(value, str) for value in request_properties.values())


def came_over_open_inference(request_properties: dict) -> bool:
    """True for a REST request to /v2/models/<model>/infer|explain (or KServe v1's /v1/models/<model>:predict),
    whatever its body: TorchServe 0.12.0 marks those with the header `explain` only, and /predictions and
    /explanations with `explain` and `url_path` (its InferenceRequestHandler). So a body that cannot be read is
    still refused in the protocol's shape."""
    return header_value(request_properties, "explain") is not None and "url_path" not in request_properties


def wants_explanation(request_properties: dict, row: dict) -> bool:
    """True for /explanations/<model> and /v2/models/<model>/explain (TorchServe marks them with the request header
    explain: True) and for a gRPC request carrying the input field explain=true (gRPC has no explain RPC)."""
    return request_properties.get("explain") == "True" or row.get("explain") in EXPLAIN_FIELD_VALUES


def code_files() -> list[str]:
    """The files this worker's network, checkpoint reader, preprocessing, predictor and request reading were imported
    from. A TorchServe worker must run the copies in its model's archive (TorchServe's extracted model directory),
    never those of a checkout that happens to be on its path: initialize logs them, and
    tests/integration/test_server.py checks them."""
    return [os.path.abspath(module.__file__) for module in (digit_cnn, checkpoint, preprocessing, predictor, wire)]


def drop_per_batch_log_lines(record: logging.LogRecord) -> bool:
    """Logging filter: False for TorchServe's per-batch INFO line, True for everything else."""
    return not str(record.msg).startswith("Backend received inference")


class DigitHandler(BaseHandler):
    """Sets the predictor up once; answers each request in a batch on its own."""

    def initialize(self, context):
        # How long this start took, by part (the last log line names them; docs/container.md, "Cold start"): the
        # worker process's start (its imports, torch's among them, until TorchServe hands it the model), then each step.
        started = time.perf_counter()
        before_load_s = metrics.process_age_seconds()
        config = (context.model_yaml_config or {}).get("handler", {}) or {}
        self.predictor = predictor.Predictor()
        try:
            self.predictor.setup(context.system_properties["model_dir"],
                                 predictor.select_device(context.system_properties.get("gpu_id")),
                                 predictor.Settings.from_mapping(config, metrics.SETTINGS),
                                 context.manifest["model"]["serializedFile"])
        except RuntimeError as error:
            logger.error("%s", error)  # the worker exits; TorchServe logs this line and retries with backoff
            raise
        # TorchServe's worker logs "Backend received inference at ..." on the root logger for every batch;
        # per-request lines cost throughput and fill the disk. Only that line is dropped.
        logging.getLogger().addFilter(drop_per_batch_log_lines)
        self.model_name = context.model_name
        self.model_version = str(context.manifest["model"].get("modelVersion", ""))
        self.batches = 0
        self.resources = metrics.WorkerResources()
        self.pending_metrics = metrics.PendingMetrics(self.model_name,
                                                      float(config.get("metrics_seconds", metrics.METRICS_SECONDS)))
        self.pending_metrics.start()
        self.initialized = True
        metrics.emit_metrics(context.metrics, [("digits_worker_starts_total", 1, {}), *self.resources.rows()],
                             self.model_name)
        ready, parts, setup = self.predictor, self.predictor.start_times, time.perf_counter() - started
        logger.info(
            "digit model loaded on %s by pid %d (preprocessing on %s, %d classes, torch threads %d, resolution %d, %s, "
            "weights sha256 %s; started in: worker start %.0f ms, weights %.0f ms, TorchScript %.0f ms, warm-up "
            "%.0f ms, the rest %.0f ms) from %s", ready.device, os.getpid(), ready.preprocessing_device,
            len(ready.labels), torch.get_num_threads(), ready.resolution, "TorchScript optimized" if ready.optimized else
            "eager", ready.digest[:16], before_load_s * 1000, parts.weights * 1000, parts.torchscript * 1000,
            parts.warm_up * 1000, (setup - parts.weights - parts.torchscript - parts.warm_up) * 1000,
            ", ".join(code_files()),
        )

    def handle(self, data, context):
        """Read each request on its own, predict the batch, answer each: one result per request, in order."""
        started = time.perf_counter()
        self.batches += 1
        properties = [context.get_all_request_header(idx) for idx in range(len(data))]
        reads = [self.read(row, request) for row, request in zip(data, properties)]
        read_s = time.perf_counter() - started
        outcomes: list = [read.refusal for read in reads]
        accepted = [idx for idx, read in enumerate(reads) if read.refusal is None]
        timings = {"preprocess_s": 0.0}
        for idx, outcome in zip(accepted, self.predictor.predict([reads[idx].request for idx in accepted], timings)):
            outcomes[idx] = outcome
        preprocessed_ms = (read_s + timings["preprocess_s"]) * 1000.0  # reading and preprocessing, not the model
        batch = str(len(data)), f"{self.resources.process.pid}-{self.batches}"
        results = [self.respond(context, idx, properties[idx], reads[idx], outcomes[idx], batch) for idx in range(len(data))]
        self.report(context, reads, outcomes, preprocessed_ms, started)
        return results

    def read(self, row: dict, properties: dict) -> wire.Read:
        return wire.read(row, self.predictor.limits, v2=came_over_open_inference(properties),
                         binary_length=header_value(properties, open_inference.BINARY_HEADER),
                         explain=wants_explanation(properties, row))

    def respond(self, context, idx: int, properties: dict, read: wire.Read, outcome, batch: tuple[str, str]):
        """Request `idx`'s result: its response headers, its status when refused, and its body."""
        grpc = came_over_grpc(properties)
        context.set_response_content_type(idx, JSON_CONTENT_TYPE)
        context.set_response_header(idx, BATCH_SIZE_HEADER, batch[0])
        context.set_response_header(idx, BATCH_ID_HEADER, batch[1])
        request_id = header_value(properties, REQUEST_ID_HEADER)
        if request_id is not None:
            context.set_response_header(idx, REQUEST_ID_ECHO_HEADER, request_id)
        if grpc:
            context.set_response_header(idx, STREAM_NEXT_HEADER, "false")
        reply = answers.reply(read, outcome, self.model_name, self.model_version, in_band=grpc)
        if reply.binary_length is not None:  # the binary tensor data extension: JSON header, then the outputs' bytes
            context.set_response_content_type(idx, open_inference.BINARY_CONTENT_TYPE)
            context.set_response_header(idx, open_inference.BINARY_HEADER, str(reply.binary_length))
        if reply.status != 200:
            context.set_response_status(reply.status, reply.phrase, idx)
        return reply.body

    def report(self, context, reads: list[wire.Read], outcomes: list, preprocessed_ms: float, started: float) -> None:
        """The batch's metrics, the worker's resources when due, and the handler's time."""
        answered = [(read, outcome) for read, outcome in zip(reads, outcomes)
                    if isinstance(outcome, predictor.Prediction)]
        asked_why = any(read.request is not None and read.request.explain for read in reads)
        rows = metrics.batch_rows(
            [read.request.kind for read, _ in answered],
            [(refused.error_type, refused.reason) for refused in map(refusals.refusal, (
                outcome for outcome in outcomes if not isinstance(outcome, predictor.Prediction)))],
            [label for _, outcome in answered for label in outcome.best], preprocessed_ms,
            sum(len(read.request.images) for read, _ in answered if read.request.explain) if asked_why else None)
        if self.resources.due:
            rows += self.resources.rows()
        self.pending_metrics.add(context.metrics, rows + metrics.handler_time_rows(started))
