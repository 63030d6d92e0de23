"""Wire formats -> decoded images: one TorchServe request row read into the grey images it carries.

The one home of every request format, so that reading a request goes down to model/preprocessing.py's decoders once
and comes back up once, and the handler only orchestrates (read -> preprocess -> predict -> format): a raw image body
or one multipart field, JSON {"data": base64 image} (a data: URL too), {"pixels": 28x28 array}, {"images": [base64
image, ...]}, each with an optional "topk", a .npy file of N x 28 x 28 frames, and Open Inference Protocol requests
(read by handler/open_inference.py, decoded here). `parse_request` does the decoding (model/preprocessing.py's
decoders) and the validation, and refuses a bad request with an InputError (InputTooLarge for a limit) whose message
names the problem and whose reason (model/preprocessing.py Reason) labels it for the metrics; it stops at decoded
images. Their geometry, for every request of a batch at once, is `preprocessing.to_mnist_geometry_batch`. Pure
functions, unit-tested without a server (tests/handler/).
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import numpy as np

from handler import open_inference
from model import preprocessing
from model.preprocessing import InputError, Reason


@dataclass
class DecodedRequest:
    """One request, read: its grey images (each any size; uint8 0..255 or float32 0..1, as
    preprocessing.to_mnist_geometry_batch takes them), its topk, whether it asked for many images (answered as a
    list) or one, and how the input came ("image", "pixels" or "multi_image", for the metrics)."""
    images: list[np.ndarray]
    topk: int
    many: bool = False
    kind: str = ""

    def __post_init__(self):
        self.kind = self.kind or ("multi_image" if self.many else "image")


def request_payload(row: dict) -> object:
    """The one payload of a TorchServe request row: the raw body, or the single multipart field."""
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


def parse_topk(value: object, num_classes: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= num_classes:
        raise InputError(f"topk must be an integer from 1 to {num_classes}, got {value!r}", Reason.BAD_TOPK)
    return value


def decode_base64(text: object) -> bytes:
    if not isinstance(text, str):
        raise InputError(f'"data" must be a base64 string, got {type(text).__name__}', Reason.BAD_BASE64)
    if text.startswith("data:"):  # a browser's canvas.toDataURL(): data:image/png;base64,....
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError('"data" is not valid base64', Reason.BAD_BASE64) from None


def decode_images_list(images: object, max_images: int) -> list[np.ndarray]:
    """JSON "images": a list of base64 images -> their grey images; an error names the image's index."""
    if not isinstance(images, list):
        raise InputError(f'"images" must be a list of base64 images, got {type(images).__name__}', Reason.BAD_JSON)
    preprocessing.check_image_count(len(images), max_images)
    return decode_each(images, lambda text: preprocessing.decode_grey(decode_base64(text)))


def decode_each(items: list, decode) -> list[np.ndarray]:
    """decode(item) for each item of a multi-image request; an error names the image's index."""
    greys = []
    for index, item in enumerate(items):
        try:
            greys.append(decode(item))
        except InputError as error:
            raise error.in_image(index) from None
    return greys


def parse_json_object(document: object, default_topk: int, num_classes: int,
                      max_images: int = preprocessing.MAX_IMAGES_PER_REQUEST) -> DecodedRequest:
    """{"data": base64}, {"pixels": 28x28} or {"images": [base64, ...]} (+ optional "topk") -> DecodedRequest."""
    if not isinstance(document, dict):
        raise InputError(
            f'JSON body must be an object with "data", "pixels" or "images", got {type(document).__name__}',
            Reason.BAD_JSON,
        )
    topk = parse_topk(document["topk"], num_classes) if "topk" in document else default_topk
    if "data" in document:
        return DecodedRequest([preprocessing.decode_grey(decode_base64(document["data"]))], topk)
    if "pixels" in document:
        return DecodedRequest([preprocessing.pixels_to_grey(document["pixels"])], topk, kind="pixels")
    if "images" in document:
        return DecodedRequest(decode_images_list(document["images"], max_images), topk, many=True)
    raise InputError(
        f'JSON body needs "data" (base64 image), "pixels" (28x28 array) or "images" (list of base64 images), '
        f"got keys {sorted(document)}",
        Reason.BAD_JSON,
    )


def looks_like_json(data: bytes) -> bool:
    head = data[:64].lstrip()
    return head[:1] in (b"{", b"[")


def read_body(row: dict) -> bytes | object:
    """One TorchServe request row -> the bytes of an image or .npy file, or a parsed JSON document.

    TorchServe has already parsed application/json bodies into Python objects and text/* bodies into
    str; other bodies arrive as bytes. JSON sent with another content type is recognised by its first byte,
    a .npy file by its magic.
    """
    payload = request_payload(row)
    if isinstance(payload, (bytes, bytearray)):
        payload = bytes(payload)
        if payload.startswith(preprocessing.NPY_MAGIC) or not looks_like_json(payload):
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


def read_binary_extension(row: dict, header_length: str) -> tuple[object, bytes]:
    """A request in the binary tensor data extension (it carried Inference-Header-Content-Length) -> its JSON header,
    parsed, and the tensors' bytes that follow it. TorchServe's worker may have parsed an application/json body
    already (then all of it was JSON and no bytes follow)."""
    payload = request_payload(row)
    if isinstance(payload, (bytes, bytearray)):
        return open_inference.split_binary_body(bytes(payload), header_length)
    if isinstance(payload, str):
        return open_inference.split_binary_body(payload.encode(), header_length)
    return payload, b""


def decode_body(body: bytes | object, default_topk: int, num_classes: int,
                max_images: int = preprocessing.MAX_IMAGES_PER_REQUEST) -> DecodedRequest:
    """What read_body returned, in TorchServe's own formats -> DecodedRequest, or InputError naming the problem."""
    if isinstance(body, bytes):
        if body.startswith(preprocessing.NPY_MAGIC):
            return DecodedRequest(list(preprocessing.decode_npy_frames(body, max_images)), default_topk, many=True)
        return DecodedRequest([preprocessing.decode_grey(body)], default_topk)
    return parse_json_object(body, default_topk, num_classes, max_images)


def decode_infer_request(request: open_inference.InferRequest) -> DecodedRequest:
    """An Open Inference Protocol request (handler/open_inference.py reads its JSON) -> its decoded images."""
    if request.frames is not None:
        return DecodedRequest(list(request.frames), 1, many=True, kind="oip")
    return DecodedRequest(decode_each(request.encoded, preprocessing.decode_grey), 1, many=True, kind="oip")


def parse_request(row: dict, default_topk: int, num_classes: int,
                  max_images: int = preprocessing.MAX_IMAGES_PER_REQUEST) -> DecodedRequest:
    """One TorchServe request row -> DecodedRequest, or InputError (InputTooLarge) naming the problem."""
    return decode_body(read_body(row), default_topk, num_classes, max_images)
