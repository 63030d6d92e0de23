"""TorchServe handler for the digit CNN: a thin BaseHandler subclass over small pure functions.

Each request in a batch is read on its own (handler/wire.py: wire format -> decoded images), then the images of
all of them go through the MNIST geometry in one batched call and the network in one forward pass. A bad request
gets HTTP 400 with a JSON message (through TorchServe's per-request status), the good ones in the same batch still
get their predictions, and the worker keeps running.

Accepted per request (REST body, or one multipart field):
  * raw image bytes: PNG, JPEG, BMP, GIF, WEBP; any size; grey, RGB, RGBA, palette, 16-bit
  * JSON {"data": "<base64 image>"} (a data: URL too), or {"pixels": [[28 numbers] x 28]} with
    values 0-255, white digit on black as in MNIST; either may add "topk": k
  * many images at once: JSON {"images": ["<base64 image>", ...]} (+ "topk"), or a .npy file of
    N x 28 x 28 pixel values 0-255 (white on black); at most handler.max_images of them (else 413)
Answered per request: {"label", "index", "probability", "topk": [{"label", "index", "probability"}, ...]};
for many images {"predictions": [one such answer per image, in order]}.
Errors: {"code": 400, "type": "InputError", "message": "..."} -- the shape TorchServe uses for its own.
Over gRPC the same bodies arrive, with gRPC status OK: TorchServe 0.12.0 drops per-request status codes on
its gRPC path and could only fail the whole batch. Clients recognise an error by its "code" field.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import warnings
from collections import Counter

import numpy as np
import psutil
import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler

from handler import explanations, open_inference, wire
from handler.batch import BatchRequest
from handler.metrics import HANDLER_TIME, RESIDENT_MEMORY, PendingMetrics, emit_metrics
from handler.wire import (DecodedRequest, decode_base64, decode_body, decode_infer_request,  # noqa: F401
                          looks_like_json, parse_json_object, parse_request, parse_topk, read_body, request_payload)
from model import checkpoint, digit_cnn, preprocessing
from model.digit_cnn import DigitCNN
from model.preprocessing import InputError, InputTooLarge, Reason

logger = logging.getLogger(__name__)

DEFAULT_TOPK = 3  # how many ranked labels each answer carries unless the request or model-config asks otherwise
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


# ---------------------------------------------------------------- loading


def select_device(gpu_id: int | None) -> torch.device:
    """cuda:<gpu_id> when TorchServe gave this worker a GPU and CUDA works, else the CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


DIGEST_FILE = "weights.sha256"  # written by scripts/package.sh: "<hex>  <weights file name>"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(weights_path: str, digest_path: str) -> str:
    """Refuse weights whose SHA-256 differs from the one recorded at packaging time; the digest if they match.

    Runs before torch.load, so a swapped or corrupted file is never deserialised. A .mar without the record
    is refused too: it was not built by scripts/package.sh.
    """
    name = os.path.basename(weights_path)
    try:
        with open(digest_path, encoding="utf-8") as file:
            expected, _, recorded_name = file.read().strip().partition("  ")
    except FileNotFoundError:
        raise RuntimeError(
            f"refusing to load {name}: no {DIGEST_FILE} in the archive (package with scripts/package.sh)"
        ) from None
    actual = file_sha256(weights_path)
    if recorded_name != name or actual != expected.lower():
        raise RuntimeError(
            f"refusing to load {name}: SHA-256 {actual} does not match {expected} recorded for "
            f"{recorded_name or '?'} at packaging time (tampered or corrupted weights)"
        )
    return actual


def load_model(weights_path: str, device: torch.device) -> tuple[DigitCNN, dict]:
    """The network rebuilt from the architecture recorded beside its weights, and the checkpoint's record
    (model/checkpoint.py: tensors and plain data only). Call verify_weights first."""
    model, _, record = checkpoint.load_checkpoint(weights_path, device)
    return model, record


def optimize_for_cpu(model: torch.nn.Module) -> torch.nn.Module:
    """TorchScript, frozen and optimized for CPU inference (BatchNorm folded into the convolutions, oneDNN
    layouts): about 3x the eager throughput at batch 64 and 1.5x at batch 1 for this network.

    Traced once on one frame; the batch dimension stays free. Warmed up on the batch sizes a worker sees, so
    the first requests do not pay for TorchScript's specialisation.
    """
    example = torch.zeros(1, 1, preprocessing.IMAGE_SIZE, preprocessing.IMAGE_SIZE)
    # torch.jit is deprecated in favour of torch.compile/torch.export but works in the pinned torch; compiling
    # with inductor would need a C++ toolchain and tens of seconds in every worker at start.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        optimized = torch.jit.optimize_for_inference(torch.jit.trace(model, example))
    with torch.inference_mode():
        for batch in (1, 2, 8, 16):
            for _ in range(2):
                optimized(example.expand(batch, -1, -1, -1).contiguous())
    return optimized


def load_labels(model_dir: str, num_classes: int) -> list[str]:
    """Labels from index_to_name.json in the archive; one per output of the network."""
    path = os.path.join(model_dir, "index_to_name.json")
    with open(path, encoding="utf-8") as file:
        labels = preprocessing.labels_from_mapping(json.load(file))
    if len(labels) != num_classes:
        raise ValueError(f"{path} names {len(labels)} classes, the network has {num_classes}")
    return labels


# ---------------------------------------------------------------- one batch: read -> preprocess -> predict -> format
# Reading a request (wire format -> decoded images) lives in handler/wire.py: parse_request and its helpers. Each
# request of a batch is carried through the steps as a BatchRequest (handler/batch.py).


def read_request(idx: int, row: dict, headers: dict, default_topk: int, num_classes: int,
                 max_images: int) -> BatchRequest:
    """Read: request `idx` of a batch (its row and TorchServe's request headers) -> its decoded images, or the error
    that refuses it: an InputError (400, 413), or any other exception (a bug: logged, and a 500 for this request
    alone, never for the batch)."""
    binary_length = header_value(headers, open_inference.BINARY_HEADER)
    request = BatchRequest(grpc=came_over_grpc(headers), explain=wants_explanation(headers, row),
                           request_id=client_request_id(headers),
                           v2=came_over_open_inference(headers) or binary_length is not None)
    try:
        binary = b""
        if binary_length is not None:
            request.body, binary = wire.read_binary_extension(row, binary_length)
        else:
            request.body = read_body(row)
        if request.v2 and not open_inference.is_infer_request(request.body):
            raise InputError('an Open Inference Protocol request is a JSON object with "inputs": one tensor of '
                             'images (BYTES [N]) or pixels (UINT8/FP32 [N, 28, 28])', Reason.BAD_REQUEST)
        if open_inference.is_infer_request(request.body):
            request.infer = open_inference.parse_infer_request(request.body, max_images, request.explain, binary)
            request.decoded = decode_infer_request(request.infer)
        else:
            request.decoded = decode_body(request.body, default_topk, num_classes, max_images)
        if request.explain:
            check_explained_count(request.decoded)
    except Exception as error:  # InputError: 400/413; a bug costs this request alone (500), never the batch
        if not isinstance(error, InputError):
            logger.exception("unexpected error parsing request %d", idx)
        request.refusal = error
    return request


def preprocess_batch(requests: list[BatchRequest], resolution: int,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Preprocess: the images of requests read -> the network inputs of those that remain answered, in order. A
    request with an image that preprocessing refuses (blank) gets that refusal; each other one its `rows` in the
    inputs. One batched call (`preprocess`); after an unexpected error in it, one call per request, so that the
    error costs only the request it belongs to."""
    decoded = [request.decoded for request in requests]
    try:
        inputs, refusals = preprocess(decoded, resolution, device)
    except Exception:  # a bug: find the request it belongs to, so that it costs that request alone
        logger.exception("unexpected error preprocessing a batch; preprocessing its requests one by one")
        inputs, refusals = preprocess_one_by_one(decoded, resolution, device)
    kept: list[int] = []
    start = 0
    for request, refusal in zip(requests, refusals):
        count = len(request.decoded.images)
        if refusal is None:
            request.rows = range(len(kept), len(kept) + count)
            kept += range(start, start + count)
        else:
            request.refusal = refusal
        start += count
    if len(kept) == len(inputs):
        return inputs
    return inputs[torch.tensor(kept, dtype=torch.long, device=inputs.device)]


def preprocess(requests: list[DecodedRequest], resolution: int,
               device: torch.device | str | None = None) -> tuple[torch.Tensor, list[InputError | None]]:
    """Every image of every decoded request -> network input, through the MNIST geometry in one batched call.

    Returns the inputs of all the images, in order (N x 1 x 28 x 28 on `device`), and per request None or the
    InputError that refuses it: its first refused image (blank), named "image i: " in a multi-image request.
    """
    images = [image for request in requests for image in request.images]
    frames, errors = preprocessing.to_mnist_geometry_batch(images, resolution, device)
    refusals: list[InputError | None] = []
    start = 0
    for request in requests:
        stop = start + len(request.images)
        index, error = next(((index, error) for index, error in enumerate(errors[start:stop]) if error is not None),
                            (0, None))
        refusals.append(error.in_image(index) if error is not None and request.many else error)
        start = stop
    return preprocessing.normalize(frames), refusals


def preprocess_one_by_one(requests: list[DecodedRequest], resolution: int,
                          device: torch.device | str | None = None) -> tuple[torch.Tensor, list[Exception | None]]:
    """preprocess, one request at a time: after an unexpected error in a batch, only the request it belongs to
    is refused (with that exception: a 500), the others are answered."""
    parts, refusals = [], []
    for request in requests:
        try:
            inputs, (refusal,) = preprocess([request], resolution, device)
        except Exception as error:  # noqa: BLE001 - a bug; logged, and this request alone gets a 500
            logger.exception("unexpected error preprocessing a request")
            size = preprocessing.IMAGE_SIZE
            inputs, refusal = torch.zeros((len(request.images), 1, size, size), device=device), error
        parts.append(inputs)
        refusals.append(refusal)
    return torch.cat(parts), refusals


EXPLAIN_FIELD_VALUES = (b"true", b"True", "true", "True")


def wants_explanation(request_headers: dict, row: dict) -> bool:
    """True for /explanations/<model> and /v2/models/<model>/explain (TorchServe marks them with the request header
    explain: True) and for a gRPC request carrying the input field explain=true (gRPC has no explain RPC)."""
    return request_headers.get("explain") == "True" or row.get("explain") in EXPLAIN_FIELD_VALUES


def check_explained_count(request: DecodedRequest, limit: int = explanations.MAX_EXPLAINED_IMAGES) -> None:
    if len(request.images) > limit:
        raise InputTooLarge(f"{len(request.images)} images to explain in one request; the limit is {limit}",
                            Reason.TOO_MANY_IMAGES)


def header_value(request_properties: dict, name: str) -> str | None:
    """A REST request's header (any spelling of its name), or None."""
    name = name.lower()
    for key, value in request_properties.items():
        if isinstance(value, str) and key.lower() == name:
            return value
    return None


def came_over_open_inference(request_properties: dict) -> bool:
    """True for a REST request to /v2/models/<model>/infer|explain (or KServe v1's /v1/models/<model>:predict),
    whatever its body: TorchServe 0.12.0 marks those with the header `explain` only, and /predictions and
    /explanations with `explain` and `url_path` (its InferenceRequestHandler). So a body that cannot be read is
    still refused in the protocol's shape."""
    return header_value(request_properties, "explain") is not None and "url_path" not in request_properties


def came_over_grpc(request_properties: dict) -> bool:
    """True for a request from TorchServe's gRPC frontend, False for REST.

    TorchServe hands the worker a REST request's HTTP headers (str values; with token authorization on there is
    always at least Authorization) beside its input fields (dict values); a gRPC request carries input fields only.
    """
    return not any(isinstance(value, str) for value in request_properties.values())


def client_request_id(request_properties: dict) -> str | None:
    """The X-Request-Id header a REST client sent (any spelling of the name), or None."""
    return header_value(request_properties, REQUEST_ID_HEADER)


def predict(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """N x 1 x 28 x 28 -> N x classes probabilities."""
    with torch.inference_mode():
        return torch.softmax(model(batch), dim=1)


def format_prediction(probabilities: torch.Tensor, labels: list[str], topk: int) -> dict:
    values, indices = torch.topk(probabilities, topk)
    return format_ranked(values.tolist(), indices.tolist(), labels)


def format_ranked(values: list[float], indices: list[int], labels: list[str]) -> dict:
    """One answer from one row's ranked probabilities and class indices (best first)."""
    ranked = [
        {"label": labels[index], "index": index, "probability": round(value, 6)}
        for value, index in zip(values, indices)
    ]
    return {**ranked[0], "topk": ranked}


def format_answer(request: BatchRequest, probabilities: torch.Tensor, values: list[list[float]],
                  indices: list[list[int]], labels: list[str], model_name: str,
                  model_version: str) -> tuple[dict, list[str]]:
    """Format: an answered request's body, from its `rows` of the batch's probabilities and their ranking (values and
    class indices, best first, at least as many per row as its topk), and the best label of each of its images.
    An Open Inference Protocol request gets the protocol's answer, any other one TorchServe-style answers."""
    rows = request.rows
    explanation = request.explanation
    if request.infer is not None:
        best = [labels[indices[row][0]] for row in rows]
        answer = open_inference.format_infer_response(
            request.infer, model_name, model_version, probabilities[rows.start:rows.stop].tolist(), best,
            [fields["attributions"] for fields in explanation] if explanation else None,
            [fields["image"] for fields in explanation] if explanation else None)
        return answer, best
    topk = request.decoded.topk
    answers = [format_ranked(values[row][:topk], indices[row][:topk], labels) for row in rows]
    for answer, fields in zip(answers, explanation):
        answer.update(fields)
    return ({"predictions": answers} if request.decoded.many else answers[0]), [answer["label"] for answer in answers]


def format_error(code: int, message: str, error_type: str = "InputError") -> dict:
    return {"code": code, "type": error_type, "message": message}


INTERNAL_REASON = "internal"  # the Reason label of a request refused by a bug (500); InputErrors carry their own
RESOURCE_METRICS_SECONDS = 10.0  # how often a worker reports its memory and CPU time
METRICS_SECONDS = 1.0  # how often a worker sends the batches' metrics (model-config handler.metrics_seconds)


def refusal_answer(error: Exception) -> tuple[int, str, dict, tuple[str, str]]:
    """A refused request's HTTP status, reason phrase, error body, and (error type, reason) for the metrics:
    413 for a limit, 400 for bad input, 500 for anything else (a bug; the message gives nothing away)."""
    if isinstance(error, InputTooLarge):
        status, phrase, body = 413, "Payload Too Large", format_error(413, str(error), "InputTooLarge")
    elif isinstance(error, InputError):
        status, phrase, body = 400, "Bad Request", format_error(400, str(error))
    else:
        status, phrase = 500, "Internal Server Error"
        body = format_error(500, "internal error while reading the input", "InternalError")
    return status, phrase, body, (body["type"], refusal_reason(error))


def format_refusal(request: BatchRequest, model_name: str, model_version: str) -> tuple[int, str, dict]:
    """Format: a refused request's HTTP status, reason phrase and body; a v2 request's body in the Open Inference
    Protocol's shape (in band over gRPC, where TorchServe drops per-request statuses)."""
    status, phrase, body, _ = refusal_answer(request.refusal)
    if request.v2 or open_inference.is_infer_request(request.body):
        if request.grpc:
            request_id = request.body.get("id") if isinstance(request.body.get("id"), str) else ""
            body = open_inference.format_grpc_error(request_id, model_name, model_version, status, body["message"])
        else:
            body = open_inference.format_error(body["message"])
    return status, phrase, body


def refusal_reason(error: Exception) -> str:
    """A refused request's Reason label: the reason its InputError was raised with (model/preprocessing.py Reason),
    never its wording; "internal" for anything else. One of a fixed few: a metric label must not carry free text."""
    return error.reason.value if isinstance(error, InputError) else INTERNAL_REASON


def batch_metrics(accepted: list, refusals: list, predicted: list[str], preprocessing_ms: float) -> list[tuple]:
    """(name, value, dimensions) for one batch: counts summed per label value, so a batch of 16 costs a few
    metric lines, not a few per request (each is a log line the frontend parses)."""
    rows = [("digits_requests_total", count, {"InputKind": kind})
            for kind, count in sorted(Counter(parsed.kind for parsed in accepted).items())]
    rows += [("digits_refusals_total", count, {"ErrorType": error_type, "Reason": reason})
             for (error_type, reason), count in sorted(Counter(refusals).items())]
    if accepted:
        rows += [("digits_images_total", len(predicted), {}), ("digits_batches_total", 1, {}),
                 ("digits_preprocessing_milliseconds_total", round(preprocessing_ms, 3), {})]
    rows += [("digits_predictions_total", count, {"Label": label}) for label, count in sorted(Counter(predicted).items())]
    return rows


def code_files() -> list[str]:
    """The files this worker's network, checkpoint reader, preprocessing and request reading were imported from.
    A TorchServe worker must run the copies in its model's archive (TorchServe's extracted model directory), never
    those of a checkout that happens to be on its path: initialize logs them, and tests/integration/test_server.py
    checks them."""
    return [os.path.abspath(module.__file__) for module in (digit_cnn, checkpoint, preprocessing, wire)]


def drop_per_batch_log_lines(record: logging.LogRecord) -> bool:
    """Logging filter: False for TorchServe's per-batch INFO line, True for everything else."""
    return not str(record.msg).startswith("Backend received inference")


def process_age_seconds() -> float:
    """How long this process has existed, on the kernel's own clock: its start (/proc/self/stat, clock ticks since
    boot) against CLOCK_BOOTTIME. Not psutil's create_time(): that adds the boot time, which /proc/stat gives in whole
    seconds, so an age from it is off by a constant of up to 1 s (ordering a worker's start before the frontend that
    spawned it). Resolution: one clock tick (10 ms)."""
    with open("/proc/self/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()  # after the command name: fields 3, 4, ...
    start_ticks = int(fields[19])  # field 22, starttime
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the handler


class DigitHandler(BaseHandler):
    """Loads the digit CNN once; answers each request in a batch on its own."""

    def initialize(self, context):
        # How long this start took, by part (the last log line names them; docs/container.md, "Cold start"): the
        # worker process's start (its imports, torch's among them, until TorchServe hands it the model), then each step.
        started = time.perf_counter()
        self.process = psutil.Process()
        before_load_s = process_age_seconds()
        properties = context.system_properties
        model_dir = properties["model_dir"]
        settings = (context.model_yaml_config or {}).get("handler", {}) or {}
        threads = int(settings.get("torch_threads", 0))
        if threads > 0:  # workers share the cores: each should use its share, not all of them
            torch.set_num_threads(threads)
        self.device = select_device(properties.get("gpu_id"))
        weights = os.path.join(model_dir, context.manifest["model"]["serializedFile"])
        try:
            digest = verify_weights(weights, os.path.join(model_dir, DIGEST_FILE))
        except RuntimeError as error:
            logger.error("%s", error)  # the worker exits; TorchServe logs this line and retries with backoff
            raise
        self.model, config, record = checkpoint.load_checkpoint(weights, self.device)
        loaded = time.perf_counter()
        # Explanations need gradients, which the frozen TorchScript copy does not keep: they use the eager network.
        self.eager_model = self.model
        optimized = bool(settings.get("optimize", True)) and self.device.type == "cpu"
        if optimized:
            self.model = optimize_for_cpu(self.model)
        compiled = time.perf_counter()
        self.labels = load_labels(model_dir, config.num_classes)
        self.resolution = checkpoint.training_resolution(record)
        self.topk = min(int(settings.get("topk", DEFAULT_TOPK)), len(self.labels))
        self.max_images = int(settings.get("max_images", preprocessing.MAX_IMAGES_PER_REQUEST))
        # TorchServe's worker logs "Backend received inference at ..." on the root logger for every batch;
        # per-request lines cost throughput and fill the disk. Only that line is dropped.
        logging.getLogger().addFilter(drop_per_batch_log_lines)
        self.context = context
        self.model_name = context.model_name
        self.model_version = str(context.manifest["model"].get("modelVersion", ""))
        self.cpu_seconds = 0.0
        self.resources_reported = 0.0
        self.batches = 0
        seconds = float(settings.get("metrics_seconds", METRICS_SECONDS))
        self.pending_metrics = PendingMetrics(self.model_name, seconds)
        self.pending_metrics.start()
        self.initialized = True
        emit_metrics(context.metrics, [("digits_worker_starts_total", 1, {}), *self.resource_metrics()], self.model_name)
        warm_from = time.perf_counter()
        preprocessing_device = self.preprocessing_device()
        done = time.perf_counter()
        logger.info(
            "digit model loaded on %s by pid %d (preprocessing on %s, %d classes, torch threads %d, resolution %d, %s, "
            "weights sha256 %s; started in: worker start %.0f ms, weights %.0f ms, TorchScript %.0f ms, warm-up "
            "%.0f ms, the rest %.0f ms) from %s", self.device, os.getpid(), preprocessing_device, len(self.labels),
            torch.get_num_threads(), self.resolution, "TorchScript optimized" if optimized else "eager", digest[:16],
            before_load_s * 1000, (loaded - started) * 1000, (compiled - loaded) * 1000, (done - warm_from) * 1000,
            (warm_from - compiled) * 1000, ", ".join(code_files()),
        )

    def preprocessing_device(self) -> torch.device:
        """Where preprocessing puts a batch: one synthetic stroke, as a PNG, through decode and `preprocess`, the
        device of its output (scripts/gpu_check.sh checks it is the GPU on a GPU worker). Also warms both up: the
        fast PNG decoder loads torchvision's image operators on first use (seconds on a busy machine), which the
        first request would otherwise wait for."""
        stroke = np.zeros((28, 28), dtype=np.uint8)
        stroke[6:22, 12:16] = 255
        png = io.BytesIO()
        Image.fromarray(stroke).save(png, format="PNG")
        grey = preprocessing.decode_grey(png.getvalue())
        inputs, _ = preprocess([DecodedRequest([grey], 1)], self.resolution, self.device)
        return inputs.device

    def resource_metrics(self) -> list[tuple]:
        """This worker's memory and the CPU time it used since the last report."""
        self.resources_reported = time.monotonic()
        times = self.process.cpu_times()
        used, self.cpu_seconds = times.user + times.system - self.cpu_seconds, times.user + times.system
        worker = {"Worker": str(self.process.pid)}
        return [(RESIDENT_MEMORY, self.process.memory_info().rss, worker),
                ("digits_worker_cpu_seconds_total", round(used, 3), worker)]

    def handle(self, data, context):
        """read -> preprocess -> predict -> format: each request read on its own, the images of all through the
        geometry in one call and the network in one forward pass; one result per request, in order. A refused
        request gets its own 4xx (or, for a bug, 500) answer; the rest of the batch is answered."""
        started = time.perf_counter()
        self.batches += 1
        requests = [read_request(idx, row, context.get_all_request_header(idx), self.topk, len(self.labels),
                                 self.max_images) for idx, row in enumerate(data)]
        accepted = [request for request in requests if request.answered]
        inputs = preprocess_batch(accepted, self.resolution, self.device)
        preprocessing_ms = (time.perf_counter() - started) * 1000.0
        answered = [request for request in accepted if request.answered]
        if answered:
            self.predict_batch(answered, inputs)
        batch_size, batch_id = str(len(data)), f"{self.process.pid}-{self.batches}"
        results = [self.respond(context, idx, request, batch_size, batch_id) for idx, request in enumerate(requests)]
        asked_why = any(request.explain for request in accepted)
        self.report(context, requests, answered, asked_why, preprocessing_ms, started)
        return results

    def predict_batch(self, requests: list[BatchRequest], inputs: torch.Tensor) -> None:
        """Predict and format: one forward pass over the answered requests' images (`inputs`), their explanations
        in one more pass, and each request's answer."""
        probabilities = predict(self.model, inputs.to(self.device)).cpu()
        # One topk and one tolist for the whole batch: per-row torch calls cost more than the model here.
        values, indices = torch.topk(probabilities, max(request.decoded.topk for request in requests))
        values, indices = values.tolist(), indices.tolist()
        explained = [request for request in requests if request.explain]
        if explained:
            self.explain_batch(inputs, indices, explained)
        for request in requests:
            request.answer, request.predicted = format_answer(request, probabilities, values, indices, self.labels,
                                                              self.model_name, self.model_version)

    def explain_batch(self, inputs: torch.Tensor, indices: list[list[int]], requests: list[BatchRequest]) -> None:
        """Integrated gradients for the requests that asked, in one pass, for the label each image was given: each
        request gets one dict per image (its `explanation`)."""
        rows = [row for request in requests for row in request.rows]
        selected = inputs[rows]
        targets = torch.tensor([indices[row][0] for row in rows])
        attributions = explanations.integrated_gradients(self.eager_model, selected, targets)
        fields = iter(explanations.explanation_fields(attributions, explanations.model_view(selected)))
        for request in requests:
            request.explanation = [next(fields) for _ in request.rows]

    def respond(self, context, idx: int, request: BatchRequest, batch_size: str, batch_id: str) -> str:
        """Request `idx`'s result: its response headers, its status when refused, and its JSON body."""
        context.set_response_content_type(idx, JSON_CONTENT_TYPE)
        context.set_response_header(idx, BATCH_SIZE_HEADER, batch_size)
        context.set_response_header(idx, BATCH_ID_HEADER, batch_id)
        if request.request_id is not None:
            context.set_response_header(idx, REQUEST_ID_ECHO_HEADER, request.request_id)
        if request.grpc:
            context.set_response_header(idx, STREAM_NEXT_HEADER, "false")
        if request.answered and request.infer is not None and not request.grpc:
            body, header_length = open_inference.encode_infer_response(request.infer, request.answer)
            if header_length is not None:  # the binary tensor data extension: JSON header, then the outputs' bytes
                context.set_response_content_type(idx, open_inference.BINARY_CONTENT_TYPE)
                context.set_response_header(idx, open_inference.BINARY_HEADER, str(header_length))
            return body
        if request.answered:
            return json.dumps(request.answer)
        status, phrase, body = format_refusal(request, self.model_name, self.model_version)
        context.set_response_status(status, phrase, idx)
        return json.dumps(body)

    def report(self, context, requests: list[BatchRequest], answered: list[BatchRequest], asked_why: bool,
               preprocessing_ms: float, started: float) -> None:
        """The batch's metrics (batch_metrics), the worker's resources every RESOURCE_METRICS_SECONDS, and the
        handler's time."""
        refusals = [refusal_answer(request.refusal)[3] for request in requests if not request.answered]
        predicted = [label for request in answered for label in request.predicted]
        rows = batch_metrics([request.decoded for request in answered], refusals, predicted, preprocessing_ms)
        if asked_why:  # a request asked for an explanation and was read
            rows.append(("digits_explained_images_total",
                         sum(len(request.decoded.images) for request in answered if request.explain), {}))
        if time.monotonic() - self.resources_reported >= RESOURCE_METRICS_SECONDS:
            rows += self.resource_metrics()
        # TorchServe's BaseHandler.handle reports HandlerTime (a gauge: the last batch); this handle replaces it, so
        # it reports it itself, and the same time summed as a counter (gauges lose all but the last batch).
        handler_ms = round((time.perf_counter() - started) * 1000.0, 3)
        rows += [(HANDLER_TIME, handler_ms, {}), ("digits_handler_milliseconds_total", handler_ms, {})]
        self.pending_metrics.add(context.metrics, rows)
