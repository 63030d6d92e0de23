"""Every request format -> the predictor's decoded requests: the one reader of requests, for any server.

`read(row, limits, ...)` takes one request's body (or its form fields) and what its path said, and returns a `Read`:
the decoded `predictor.Request`, or the refusal of the request, and how to answer it (TorchServe's own shape or the
Open Inference Protocol's). The formats:
  * a raw image body (PNG, JPEG, BMP, GIF, WEBP), or one multipart field named "data"
  * JSON {"data": base64 image} (a data: URL too), {"pixels": 28x28 array 0-255}, {"images": [base64 image, ...]},
    each with an optional "topk"
  * a .npy file of N x 28 x 28 pixel values 0-255 (white digit on black)
  * Open Inference Protocol requests, JSON or in the binary tensor data extension (handler/open_inference.py reads
    their tensors)
Every fault is refused by its one validator (handler/refusals.py), so a fault gets the same reason and status
whichever format carried it. Reading stops at decoded images; their geometry, for a whole batch at once, is the
predictor's. Pure functions, unit-tested without a server (tests/handler/test_wire.py).
"""
from __future__ import annotations

import io
import json
import logging
import tokenize
from dataclasses import dataclass

import numpy as np

from handler import open_inference, refusals
from handler.predictor import Limits, Request
from handler.refusals import InputError, Reason
from model import preprocessing

logger = logging.getLogger(__name__)

NPY_MAGIC = b"\x93NUMPY"
# .npy dtypes a frame array may have: pixel values 0..255 as integers or floats; never objects (pickles).
NPY_DTYPES = ("|u1", "<u2", ">u2", "<i2", ">i2", "<i4", ">i4", "<i8", ">i8", "<f4", ">f4", "<f8", ">f8")


@dataclass
class Read:
    """One request, read: the decoded request for the predictor, or why it is refused; and how it is answered."""

    request: Request | None = None
    refusal: Exception | None = None  # an InputError (400, 413), or any other exception: a bug (500)
    infer: open_inference.InferRequest | None = None  # an Open Inference Protocol request, read
    v2: bool = False  # answered in the Open Inference Protocol's shape, refusals included
    request_id: str = ""  # a v2 request's "id" where it could be read: an in-band gRPC refusal carries it


def read(row: dict, limits: Limits, *, v2: bool = False, binary_length: str | None = None,
         explain: bool = False) -> Read:
    """One request -> its Read. `row`: the body as {"body": ...} or the form fields ({"data": ...}); the body as
    bytes, text, or JSON a server parsed already. `v2`: it came to an Open Inference Protocol path (answered in the
    protocol's shape whatever its body); `binary_length`: its Inference-Header-Content-Length (the binary tensor data
    extension); `explain`: it asked why. A bad request is refused with an InputError, a bug with the exception it
    raised (logged): either costs this request alone."""
    result = Read(v2=v2 or binary_length is not None)
    body = None
    try:
        binary = b""
        if binary_length is not None:
            body, binary = read_binary_extension(request_payload(row), binary_length)
        else:
            body = read_body(request_payload(row))
        if open_inference.is_infer_request(body):
            result.v2, result.request_id = True, body["id"] if isinstance(body.get("id"), str) else ""
            result.infer = open_inference.parse_infer_request(body, limits.max_images, explain, binary)
            result.request = decode_infer_request(result.infer)
        elif result.v2:
            empty = body == b""
            raise InputError(f'{"empty body: " if empty else ""}an Open Inference Protocol request is a JSON object '
                             'with "inputs": one tensor of images (BYTES [N]) or pixels (UINT8/FP32 [N, 28, 28])',
                             Reason.EMPTY_BODY if empty else Reason.BAD_REQUEST)
        else:
            result.request = decode_body(body, limits)
        if explain:
            refusals.check_explained_count(len(result.request.images))
            result.request.explain = True
    except Exception as error:  # InputError: 400/413; a bug costs this request alone (500), never the batch
        if not isinstance(error, InputError):
            logger.exception("unexpected error reading a request")
        result.request, result.refusal = None, error
    return result


def request_payload(row: dict) -> object:
    """The one payload of a request: the raw body, or the single (multipart) form field."""
    for key in ("data", "body"):
        if row.get(key) is not None:
            return row[key]
    if len(row) == 1:
        return next(iter(row.values()))
    if not row:  # also what a form-urlencoded body (curl -d) becomes: TorchServe parses it as form fields
        raise InputError(
            "empty request: send the image as the raw body (curl --data-binary @digit.png "
            "-H 'Content-Type: application/octet-stream', or curl -T digit.png), as multipart field 'data', or as JSON",
            Reason.EMPTY_BODY,
        )
    raise InputError(f"expected one body or one form field named 'data', got fields {sorted(row)}", Reason.BAD_REQUEST)


def looks_like_json(data: bytes) -> bool:
    head = data[:64].lstrip()
    return head[:1] in (b"{", b"[")


def read_body(payload: object) -> bytes | object:
    """A request's payload -> the bytes of an image or .npy file, or a parsed JSON document.

    TorchServe has already parsed application/json bodies into Python objects and text/* bodies into str; other
    bodies arrive as bytes. JSON sent with another content type is recognised by its first byte, a .npy file by
    its magic.
    """
    if isinstance(payload, (bytes, bytearray)):
        payload = bytes(payload)
        if payload.startswith(NPY_MAGIC) or not looks_like_json(payload):
            return payload
        try:
            return json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"invalid JSON: {error}", Reason.BAD_JSON) from None
    if isinstance(payload, str):
        try:
            return json.loads(payload)
        except json.JSONDecodeError:
            raise InputError("text body is neither an image nor JSON", Reason.NOT_AN_IMAGE) from None
    return payload


def read_binary_extension(payload: object, header_length: str) -> tuple[object, bytes]:
    """A body in the binary tensor data extension -> its JSON header, parsed, and the tensors' bytes that follow it.
    A server may have parsed an application/json body already (then all of it was JSON and no bytes follow)."""
    if isinstance(payload, (bytes, bytearray)):
        return open_inference.split_binary_body(bytes(payload), header_length)
    if isinstance(payload, str):
        return open_inference.split_binary_body(payload.encode(), header_length)
    return payload, b""


# ---------------------------------------------------------------- TorchServe's own formats


def decode_body(body: bytes | object, limits: Limits) -> Request:
    """What read_body returned, in the bundle's own formats -> Request, or InputError naming the problem."""
    if isinstance(body, bytes):
        if body.startswith(NPY_MAGIC):
            return Request(list(decode_npy_frames(body, limits.max_images)), limits.topk, many=True)
        return Request([refusals.decode_image(body)], limits.topk)
    return parse_json_object(body, limits)


def parse_json_object(document: object, limits: Limits) -> Request:
    """{"data": base64}, {"pixels": 28x28} or {"images": [base64, ...]} (+ optional "topk") -> Request."""
    if not isinstance(document, dict):
        raise InputError(
            f'JSON body must be an object with "data", "pixels" or "images", got {type(document).__name__}',
            Reason.BAD_JSON,
        )
    topk = refusals.parse_topk(document["topk"], limits.num_classes) if "topk" in document else limits.topk
    if "data" in document:
        return Request([refusals.decode_image(refusals.decode_base64(document["data"]))], topk)
    if "pixels" in document:
        return Request([pixels_to_grey(document["pixels"])], topk, kind="pixels")
    if "images" in document:
        return Request(decode_images_list(document["images"], limits.max_images), topk, many=True)
    raise InputError(
        f'JSON body needs "data" (base64 image), "pixels" (28x28 array) or "images" (list of base64 images), '
        f"got keys {sorted(document)}",
        Reason.BAD_JSON,
    )


def decode_images_list(images: object, max_images: int) -> list[np.ndarray]:
    """JSON "images": a list of base64 images -> their grey images; an error names the image's index."""
    if not isinstance(images, list):
        raise InputError(f'"images" must be a list of base64 images, got {type(images).__name__}', Reason.BAD_JSON)
    refusals.check_image_count(len(images), max_images)
    return refusals.decode_each(images, lambda text: refusals.decode_image(refusals.decode_base64(text, None)))


def pixels_to_grey(pixels: object) -> np.ndarray:
    """A JSON 28x28 array of pixel values (0..255, white digit on black as in MNIST) -> float32 in [0, 1]."""
    array = refusals.pixel_array(pixels)
    refusals.check_one_frame(array.shape)
    refusals.check_pixel_range(array)
    return (array / 255.0).astype(np.float32)


def decode_npy_frames(data: bytes, limit: int = refusals.MAX_IMAGES_PER_REQUEST) -> np.ndarray:
    """A .npy file of N x 28 x 28 pixel values (0..255, white digit on black as in MNIST) -> float32 in [0, 1].

    The header is checked before any pixel is read: shape, count, dtype (numbers only, never pickled objects)
    and that the file holds exactly the bytes the header promises. np.load would allocate the array the
    header declares first, so a 60-byte file could claim terabytes.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, SyntaxError, tokenize.TokenError) as error:  # numpy's header parser raises all three
        raise InputError(f"not a valid .npy file: {error}", Reason.BAD_NPY) from None
    if dtype.str not in NPY_DTYPES:
        raise InputError(f".npy dtype must be an integer or float type, got {dtype.str}", Reason.BAD_NPY)
    count = refusals.frame_count(shape)
    refusals.check_image_count(count, limit)
    payload = data[stream.tell():]
    size = preprocessing.IMAGE_SIZE
    expected = count * size * size * dtype.itemsize
    if len(payload) != expected:
        raise InputError(f".npy holds {len(payload)} bytes of data, its header promises {expected}", Reason.BAD_NPY)
    frames = np.frombuffer(payload, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    refusals.check_pixel_range(frames)
    return frames.reshape(count, size, size).astype(np.float32) / np.float32(255.0)


def decode_infer_request(request: open_inference.InferRequest) -> Request:
    """An Open Inference Protocol request (handler/open_inference.py reads its tensors) -> its decoded images."""
    if request.frames is not None:
        return Request(list(request.frames), 1, many=True, kind="oip")
    return Request(refusals.decode_each(request.encoded, refusals.decode_image), 1, many=True, kind="oip")
