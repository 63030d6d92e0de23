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
Errors: `{"error": "<message>"}` with the HTTP status, the protocol's REST error shape (handler/refusals.py).

Over REST, Triton's binary tensor data extension too (what tritonclient sends by default): the body is the JSON
header (its length in the request header Inference-Header-Content-Length), then the input's bytes (its
`parameters.binary_data_size`): BYTES elements each as a 4-byte little-endian length and the bytes (raw images, not
base64), numbers as little-endian values, row-major. Outputs go out in binary the same way when the request asks
(`parameters.binary_data_output` for all, an output's `parameters.binary_data` for one), with the answer's own
Inference-Header-Content-Length.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import numpy as np

from handler import refusals
from handler.refusals import InputError, Reason
from model import preprocessing

IMAGES_DATATYPE = "BYTES"
# Pixel tensors: the protocol's integer and float types (the gRPC frontend sends UINT8 as uint_contents, FP32 as
# fp32_contents; over REST all are JSON numbers). FP16 and BOOL are not pixel types.
PIXEL_DATATYPES = ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64")
PROBABILITIES, LABELS, ATTRIBUTIONS, IMAGES = "probabilities", "labels", "attributions", "images"
ERROR_OUTPUT = "error"  # the one output of a refused gRPC request (see format_grpc_error)
# Why an input may arrive with no data at all: a gRPC client sent raw_input_contents (tritonclient's always does).
RAW_CONTENTS_HINT = (" (none at all: over gRPC, TorchServe 0.12.0 passes typed contents only and drops "
                     "raw_input_contents, which tritonclient's gRPC client sends; use REST, or typed contents)")
# The binary tensor data extension: the request and answer header naming the JSON part's length, the answer's type.
BINARY_HEADER = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
# Each numeric datatype's bytes in binary data: little-endian, as the extension specifies.
BINARY_DTYPES = {"UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1", "INT16": "<i2",
                 "INT32": "<i4", "INT64": "<i8", "FP32": "<f4", "FP64": "<f8"}


@dataclass
class InferRequest:
    """A v2 request, read: its id, its input's name, the outputs it asked for (all when None), and its images:
    encoded images (BYTES) or pixel frames N x 28 x 28 in [0, 1]."""
    id: str
    input_name: str
    outputs: list[str] | None
    encoded: list[bytes] = field(default_factory=list)
    frames: np.ndarray | None = None
    binary_output: bool = False  # parameters.binary_data_output: every output in binary unless it says otherwise
    binary_by_output: dict[str, bool] = field(default_factory=dict)  # an output's own parameters.binary_data

    @property
    def count(self) -> int:
        return len(self.encoded) if self.frames is None else len(self.frames)

    def wants_binary(self, output: str) -> bool:
        return self.binary_by_output.get(output, self.binary_output)


def is_infer_request(document: object) -> bool:
    """A parsed JSON body that is a v2 inference request (it has "inputs"; TorchServe's own JSON never does)."""
    return isinstance(document, dict) and "inputs" in document


def parse_shape(shape: object) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(size, int) and not isinstance(size, bool) and size >= 0
                                              for size in shape):
        raise InputError(f'"shape" must be a list of non-negative integers, got {shape!r}', Reason.BAD_REQUEST)
    return shape


def parse_parameters(item: dict, where: str) -> dict:
    parameters = item.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InputError(f'{where} "parameters" must be an object, got {type(parameters).__name__}', Reason.BAD_REQUEST)
    return parameters


def parse_flag(parameters: dict, name: str, where: str) -> bool | None:
    value = parameters.get(name)
    if value is not None and not isinstance(value, bool):
        raise InputError(f"{where} parameter {name} must be true or false, got {value!r}", Reason.BAD_REQUEST)
    return value


def parse_requested_outputs(outputs: object, allowed: tuple[str, ...]) -> tuple[list[str] | None, dict[str, bool]]:
    """The outputs a request named (None: all) and, for each that says, whether it wants its data in binary."""
    if outputs is None:
        return None, {}
    if not isinstance(outputs, list) or not all(isinstance(item, dict) and isinstance(item.get("name"), str)
                                                for item in outputs):
        raise InputError('"outputs" must be a list of objects with a "name"', Reason.BAD_REQUEST)
    names = [item["name"] for item in outputs]
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise InputError(f"unknown output {unknown[0]!r}: this model answers {', '.join(allowed)}", Reason.BAD_REQUEST)
    binary = {}
    for item in outputs:
        flag = parse_flag(parse_parameters(item, f"output {item['name']!r}"), "binary_data", f"output {item['name']!r}")
        if flag is not None:
            binary[item["name"]] = flag
    return names, binary


def split_binary_body(body: bytes, header_length: str) -> tuple[object, bytes]:
    """A body in the binary tensor data extension -> its JSON header, parsed, and the tensors' bytes after it."""
    try:
        length = int(header_length)
    except ValueError:
        raise InputError(f"{BINARY_HEADER} must be a byte count, got {header_length!r}", Reason.BAD_REQUEST) from None
    if not 0 < length <= len(body):
        raise InputError(f"{BINARY_HEADER} is {length}, but the body holds {len(body)} bytes", Reason.BAD_REQUEST)
    try:
        document = json.loads(body[:length])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"invalid JSON in the body's first {length} bytes ({BINARY_HEADER}): {error}",
                         Reason.BAD_JSON) from None
    return document, body[length:]


def split_bytes_elements(raw: bytes) -> list[bytes]:
    """BYTES elements in binary: each a 4-byte little-endian length, then that many bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InputError(f"BYTES data ends inside element {len(elements)}'s 4-byte length", Reason.BAD_REQUEST)
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InputError(f"BYTES element {len(elements)} claims {length} bytes, {len(raw) - offset} remain",
                             Reason.BAD_REQUEST)
        elements.append(raw[offset:offset + length])
        offset += length
    return elements


def binary_input(tensor: dict, binary: bytes) -> bytes | None:
    """The input's bytes when it came in binary (parameters.binary_data_size), else None; the body's binary part
    must be exactly those bytes."""
    size = parse_parameters(tensor, "input").get("binary_data_size")
    if size is None:
        if binary:
            raise InputError(f"{len(binary)} bytes follow the JSON header, but the input has no "
                             f"parameters.binary_data_size", Reason.BAD_REQUEST)
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InputError(f"binary_data_size must be a non-negative integer, got {size!r}", Reason.BAD_REQUEST)
    if "data" in tensor:
        raise InputError('the input has both "data" and binary data (binary_data_size)', Reason.BAD_REQUEST)
    if size != len(binary):
        raise InputError(f"the input's binary_data_size is {size}, but {len(binary)} bytes follow the JSON header",
                         Reason.BAD_REQUEST)
    return binary


def decode_images(data: list) -> list[bytes]:
    """BYTES elements as JSON: each a base64 image (a data: URL too)."""
    return refusals.decode_each(data, lambda text: refusals.decode_base64(text, None))


def read_frames(data: list, shape: list[int], count: int) -> np.ndarray:
    """Pixel values 0..255 as JSON numbers, N x 28 x 28 (white on black) -> float32 frames in [0, 1]."""
    return frames_from_values(refusals.pixel_array(data), shape, count)


def read_binary_frames(raw: bytes, datatype: str, shape: list[int], count: int) -> np.ndarray:
    """Pixel values 0..255 in binary (little-endian `datatype`), N x 28 x 28 -> float32 frames in [0, 1]."""
    dtype = np.dtype(BINARY_DTYPES[datatype])
    needed = count * preprocessing.IMAGE_SIZE ** 2 * dtype.itemsize
    if len(raw) != needed:
        raise InputError(f"binary input holds {len(raw)} bytes, its shape {shape} of {datatype} needs {needed}",
                         Reason.BAD_REQUEST)
    return frames_from_values(np.frombuffer(raw, dtype=dtype).astype(np.float64), shape, count)


def frames_from_values(array: np.ndarray, shape: list[int], count: int) -> np.ndarray:
    size = preprocessing.IMAGE_SIZE
    if array.size != count * size * size:
        raise InputError(f"input holds {array.size} values, its shape {shape} needs {count * size * size}"
                         f"{RAW_CONTENTS_HINT if not array.size else ''}", Reason.BAD_REQUEST)
    refusals.check_pixel_range(array)
    return (array.reshape(count, size, size) / 255.0).astype(np.float32)


def parse_infer_request(document: dict, max_images: int, explain: bool = False, binary: bytes = b"") -> InferRequest:
    """A v2 request body -> InferRequest, or InputError (InputTooLarge for too many images) naming the problem.
    `binary`: what followed the JSON header in a binary tensor data extension body (the input's bytes)."""
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
    raw = binary_input(tensor, binary)
    needed = ("name", "datatype", "shape") if raw is not None else ("name", "datatype", "shape", "data")
    missing = [key for key in needed if key not in tensor]
    if missing:
        raise InputError(f"input tensor lacks {', '.join(repr(key) for key in missing)}", Reason.BAD_REQUEST)
    name, datatype = tensor["name"], tensor["datatype"]
    if not isinstance(name, str):
        raise InputError('input "name" must be a string', Reason.BAD_REQUEST)
    shape = parse_shape(tensor["shape"])
    allowed = (PROBABILITIES, LABELS, ATTRIBUTIONS, IMAGES) if explain else (PROBABILITIES, LABELS)
    outputs, binary_by_output = parse_requested_outputs(document.get("outputs"), allowed)
    binary_output = parse_flag(parse_parameters(document, "the request's"), "binary_data_output", "the request's")

    def infer_request(**images) -> InferRequest:
        return InferRequest(request_id, name, outputs, **images, binary_output=bool(binary_output),
                            binary_by_output=binary_by_output)

    if datatype == IMAGES_DATATYPE:
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise InputError(f"a BYTES input has shape [N] (one encoded image each), got {shape}", Reason.BAD_REQUEST)
        count = shape[0]
        refusals.check_image_count(count, max_images)
        elements = split_bytes_elements(raw) if raw is not None else refusals.flatten(tensor["data"])
        if len(elements) != count:
            raise InputError(f"input holds {len(elements)} elements, its shape {shape} needs {count}"
                             f"{RAW_CONTENTS_HINT if not elements else ''}", Reason.BAD_REQUEST)
        return infer_request(encoded=elements if raw is not None else decode_images(elements))
    if datatype in PIXEL_DATATYPES:
        count = refusals.frame_count(shape)
        refusals.check_image_count(count, max_images)
        if raw is not None:
            return infer_request(frames=read_binary_frames(raw, datatype, shape, count))
        return infer_request(frames=read_frames(refusals.flatten(tensor["data"]), shape, count))
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
        tensors[ATTRIBUTIONS] = output_tensor(ATTRIBUTIONS, "FP32", [count, size, size], frames_data(attributions))
        tensors[IMAGES] = output_tensor(IMAGES, "FP32", [count, size, size], frames_data(images))
    names = request.outputs if request.outputs is not None else list(tensors)
    return {"id": request.id, "model_name": model_name, "model_version": model_version,
            "outputs": [tensors[name] for name in names]}


def frames_data(frames: list[list[list[float]]]) -> list[float]:
    """Frames as JSON rows -> the protocol's row-major data."""
    return [value for frame in frames for row in frame for value in row]


def tensor_bytes(datatype: str, data: list) -> bytes:
    """An output's data in binary: BYTES elements length-prefixed (4 bytes, little-endian), numbers little-endian."""
    if datatype == "BYTES":
        elements = [item.encode() if isinstance(item, str) else bytes(item) for item in data]
        return b"".join(struct.pack("<I", len(element)) + element for element in elements)
    return np.asarray(data, dtype=BINARY_DTYPES[datatype]).tobytes()


def encode_infer_response(request: InferRequest, answer: dict) -> tuple[str | bytes, int | None]:
    """The answer's body: JSON text, or, when the request asked for any output in binary, the JSON header (those
    outputs carry parameters.binary_data_size instead of "data") followed by their bytes in order; and the header's
    length (for Inference-Header-Content-Length), None for plain JSON."""
    chunks = []
    outputs = []
    for tensor in answer["outputs"]:
        if request.wants_binary(tensor["name"]):
            raw = tensor_bytes(tensor["datatype"], tensor["data"])
            tensor = {key: value for key, value in tensor.items() if key != "data"}
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        outputs.append(tensor)
    if not chunks:
        return json.dumps(answer), None
    header = json.dumps({**answer, "outputs": outputs}).encode()
    return header + b"".join(chunks), len(header)


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
