"""The Open Inference Protocol (KServe v2) on the wire: a v2 inference request in, the protocol's answer out.

TorchServe routes `POST /v2/models/<model>/infer` (REST) and `ModelInfer` (gRPC service
inference.GRPCInferenceService, with ts_open_inference_protocol=true) to the handler as v2 JSON:
  {"id": "...", "inputs": [{"name": "...", "datatype": "...", "shape": [...], "data": [...]}], "outputs": [...]}
(the gRPC frontend turns typed `contents` into "data" and BYTES into base64 strings; it ignores
`raw_input_contents`, so gRPC clients must send typed contents).

One input tensor, either
  * BYTES, shape [N] (or [N, 1]): N encoded images (PNG, JPEG, ...), each a base64 string, or
  * UINT8 / FP32 (any integer or float type), shape [N, 28, 28] (or [28, 28], or [N, 1, 28, 28]): pixel values
    0-255, white digit on black as in MNIST, row-major (flat, as the protocol sends it, or nested).
Answered with outputs "probabilities" (FP32 [N, classes]) and "labels" (BYTES [N]: the best label per image);
an explanation (`/v2/models/<model>/explain`) adds "attributions" and "images" (FP32 [N, 28, 28]).
Errors: `{"error": "<message>"}` with the HTTP status, the protocol's REST error shape.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

import numpy as np

from model import preprocessing
from model.preprocessing import InputError, Reason

IMAGES_DATATYPE = "BYTES"
# Pixel tensors: the protocol's integer and float types (the gRPC frontend sends UINT8 as uint_contents, FP32 as
# fp32_contents; over REST all are JSON numbers). FP16 and BOOL are not pixel types.
PIXEL_DATATYPES = ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64")
PROBABILITIES, LABELS, ATTRIBUTIONS, IMAGES = "probabilities", "labels", "attributions", "images"
ERROR_OUTPUT = "error"  # the one output of a refused gRPC request (see format_grpc_error)


@dataclass
class InferRequest:
    """A v2 request, read: its id, its input's name, the outputs it asked for (all when None), and its images:
    encoded images (BYTES) or pixel frames N x 28 x 28 in [0, 1]."""
    id: str
    input_name: str
    outputs: list[str] | None
    encoded: list[bytes] = field(default_factory=list)
    frames: np.ndarray | None = None

    @property
    def count(self) -> int:
        return len(self.encoded) if self.frames is None else len(self.frames)


def is_infer_request(document: object) -> bool:
    """A parsed JSON body that is a v2 inference request (it has "inputs"; TorchServe's own JSON never does)."""
    return isinstance(document, dict) and "inputs" in document


def parse_shape(shape: object) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(size, int) and not isinstance(size, bool) and size >= 0
                                              for size in shape):
        raise InputError(f'"shape" must be a list of non-negative integers, got {shape!r}', Reason.BAD_REQUEST)
    return shape


def flatten(data: object) -> list:
    """The protocol's row-major data, flat or nested, as one flat list (nested lists are flattened in order)."""
    if not isinstance(data, list):
        raise InputError(f'"data" must be a list, got {type(data).__name__}', Reason.BAD_REQUEST)
    if data and isinstance(data[0], list):
        flat: list = []
        stack = [iter(data)]
        while stack:
            for item in stack[-1]:
                if isinstance(item, list):
                    stack.append(iter(item))
                    break
                flat.append(item)
            else:
                stack.pop()
        return flat
    return data


def parse_requested_outputs(outputs: object, allowed: tuple[str, ...]) -> list[str] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(isinstance(item, dict) and isinstance(item.get("name"), str)
                                                for item in outputs):
        raise InputError('"outputs" must be a list of objects with a "name"', Reason.BAD_REQUEST)
    names = [item["name"] for item in outputs]
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise InputError(f"unknown output {unknown[0]!r}: this model answers {', '.join(allowed)}", Reason.BAD_REQUEST)
    return names


def decode_images(data: list) -> list[bytes]:
    encoded = []
    for index, text in enumerate(data):
        if not isinstance(text, str):
            raise InputError(f"image {index}: BYTES elements must be base64 strings, got {type(text).__name__}",
                             Reason.BAD_REQUEST)
        try:
            encoded.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise InputError(f"image {index}: not valid base64", Reason.BAD_REQUEST) from None
    return encoded


def read_frames(data: list, shape: list[int], count: int) -> np.ndarray:
    """Pixel values 0..255, N x 28 x 28 (white on black) -> float32 frames in [0, 1]."""
    size = preprocessing.IMAGE_SIZE
    if any(isinstance(value, (bool, str)) or value is None for value in data):
        raise InputError("pixel tensor data must be numbers 0-255", Reason.BAD_REQUEST)
    try:
        array = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("pixel tensor data must be numbers 0-255", Reason.BAD_REQUEST) from None
    if array.ndim != 1:
        raise InputError("pixel tensor data must be numbers 0-255", Reason.BAD_REQUEST)
    if array.size != count * size * size:
        raise InputError(f"input holds {array.size} values, its shape {shape} needs {count * size * size}",
                         Reason.BAD_REQUEST)
    if not np.isfinite(array).all():
        raise InputError("pixel tensor holds NaN or infinite values", Reason.BAD_REQUEST)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise InputError(f"pixel values must lie in 0..255, got {array.min():g}..{array.max():g}", Reason.BAD_PIXELS)
    return (array.reshape(count, size, size) / 255.0).astype(np.float32)


def parse_infer_request(document: dict, max_images: int, explain: bool = False) -> InferRequest:
    """A v2 request body -> InferRequest, or InputError (InputTooLarge for too many images) naming the problem."""
    size = preprocessing.IMAGE_SIZE
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InputError(f'"id" must be a string, got {type(request_id).__name__}', Reason.BAD_REQUEST)
    inputs = document["inputs"]
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        count = len(inputs) if isinstance(inputs, list) else type(inputs).__name__
        raise InputError(
            f'"inputs" must hold exactly one tensor (images as BYTES [N], or pixels as UINT8/FP32 '
            f"[N, {size}, {size}]), got {count}",
            Reason.BAD_REQUEST,
        )
    tensor = inputs[0]
    missing = [key for key in ("name", "datatype", "shape", "data") if key not in tensor]
    if missing:
        raise InputError(f"input tensor lacks {', '.join(repr(key) for key in missing)}", Reason.BAD_REQUEST)
    name, datatype = tensor["name"], tensor["datatype"]
    if not isinstance(name, str):
        raise InputError('input "name" must be a string', Reason.BAD_REQUEST)
    shape = parse_shape(tensor["shape"])
    allowed = (PROBABILITIES, LABELS, ATTRIBUTIONS, IMAGES) if explain else (PROBABILITIES, LABELS)
    outputs = parse_requested_outputs(document.get("outputs"), allowed)
    data = flatten(tensor["data"])
    if datatype == IMAGES_DATATYPE:
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise InputError(f"a BYTES input has shape [N] (one encoded image each), got {shape}", Reason.BAD_REQUEST)
        count = shape[0]
        preprocessing.check_image_count(count, max_images)
        if len(data) != count:
            raise InputError(f"input holds {len(data)} elements, its shape {shape} needs {count}", Reason.BAD_REQUEST)
        return InferRequest(request_id, name, outputs, encoded=decode_images(data))
    if datatype in PIXEL_DATATYPES:
        if shape == [size, size]:
            count = 1
        elif len(shape) == 3 and shape[1:] == [size, size]:
            count = shape[0]
        elif len(shape) == 4 and shape[1:] == [1, size, size]:
            count = shape[0]
        else:
            raise InputError(f"a pixel input has shape [N, {size}, {size}], got {shape}", Reason.BAD_REQUEST)
        preprocessing.check_image_count(count, max_images)
        return InferRequest(request_id, name, outputs, frames=read_frames(data, shape, count))
    raise InputError(
        f"input datatype {datatype!r} is not accepted: BYTES (encoded images) or "
        f"{', '.join(PIXEL_DATATYPES)} (pixels 0-255)",
        Reason.BAD_REQUEST,
    )


def output_tensor(name: str, datatype: str, shape: list[int], data: list) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def format_infer_response(request: InferRequest, model_name: str, model_version: str, probabilities: list[list[float]],
                          labels: list[str], attributions: list | None = None, images: list | None = None) -> dict:
    """The v2 answer: probabilities [N, classes] and best labels [N]; attributions and images [N, 28, 28] when
    explained. Only the outputs the request named, when it named any."""
    count = len(probabilities)
    classes = len(probabilities[0]) if probabilities else 0
    size = preprocessing.IMAGE_SIZE
    tensors = {
        PROBABILITIES: output_tensor(PROBABILITIES, "FP32", [count, classes],
                                     [round(value, 6) for row in probabilities for value in row]),
        LABELS: output_tensor(LABELS, "BYTES", [count], labels),
    }
    if attributions is not None:
        tensors[ATTRIBUTIONS] = output_tensor(ATTRIBUTIONS, "FP32", [count, size, size], flatten(attributions))
        tensors[IMAGES] = output_tensor(IMAGES, "FP32", [count, size, size], flatten(images))
    names = request.outputs if request.outputs is not None else list(tensors)
    return {"id": request.id, "model_name": model_name, "model_version": model_version,
            "outputs": [tensors[name] for name in names]}


def format_error(message: str) -> dict:
    """The protocol's REST error body."""
    return {"error": message}


def format_grpc_error(request_id: str, model_name: str, model_version: str, code: int, message: str) -> dict:
    """A refused request over gRPC: TorchServe 0.12.0 answers a v2 gRPC request from the handler's JSON with status
    OK whatever status the handler sets for it (only a failure of the whole batch becomes a gRPC error, and would
    fail the other requests in the batch too). So the refusal travels in-band: one BYTES output named "error"
    holding {"code", "error"} as JSON. Its "id", "model_name" and "model_version" must be there: the frontend reads
    them from every answer.

    The element is a JSON object, not a string: the frontend writes each BYTES element as its JSON text, so a string
    would reach the client in quotes (labels do: b'"7"'), an object arrives as plain JSON.
    """
    return {"id": request_id, "model_name": model_name, "model_version": model_version,
            "outputs": [output_tensor(ERROR_OUTPUT, "BYTES", [1], [{"code": code, "error": message}])]}
