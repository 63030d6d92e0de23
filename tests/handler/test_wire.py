"""The one reader of requests (handler/wire.py): every format read into decoded requests, every fault refused with its
reason, a bug refused for its request alone; the .npy and pixel-array decoders; and property-based fuzzing of what
reads client bytes, through `wire.read` (what a worker runs) and then the predictor's preprocessing."""
from __future__ import annotations

import base64
import io
import json
import logging
import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from handler import open_inference, predictor, refusals, wire
from handler.refusals import InputError, InputTooLarge, Reason
from model import preprocessing
from tests.model.test_fuzz_preprocessing import FUZZ, SEEDS, assert_network_input, mutated_images
from tests.support import bad_inputs
from tests.support.images import npy_bytes, png_bytes

LIMITS = predictor.Limits(num_classes=10, topk=3, max_images=256)
STROKE = np.zeros((28, 28), np.uint8)
STROKE[6:22, 12:16] = 255  # a "1"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def read(row: dict, **how) -> wire.Read:
    return wire.read(row, LIMITS, **how)


def refusal_of(row: dict, **how) -> InputError:
    result = read(row, **how)
    assert result.request is None and isinstance(result.refusal, InputError), result
    return result.refusal


def v2_images(count: int, request_id: str = "r-1") -> dict:
    return {"id": request_id, "inputs": [{"name": "x", "datatype": "BYTES", "shape": [count],
                                          "data": [b64(png_bytes(STROKE))] * count}]}


def as_unit(grey: np.ndarray) -> np.ndarray:
    """A decoded grey image (uint8 0..255 or float 0..1) as float 0..1."""
    return grey / np.float32(255.0) if grey.dtype == np.uint8 else grey


# ---------------------------------------------------------------- every format, read


PNG = png_bytes(STROKE)
FORMATS = {
    "raw bytes": ({"body": bytearray(PNG)}, 1, "image"),
    "bytes": ({"body": PNG}, 1, "image"),
    "multipart field": ({"data": bytearray(PNG)}, 1, "image"),
    "a single other field": ({"file": bytearray(PNG)}, 1, "image"),
    "json parsed": ({"body": {"data": b64(PNG)}}, 1, "image"),
    "json bytes": ({"body": bytearray(json.dumps({"data": b64(PNG)}).encode())}, 1, "image"),
    "json text": ({"body": json.dumps({"data": b64(PNG)})}, 1, "image"),
    "json after spaces": ({"body": bytearray(b"  \n" + json.dumps({"data": b64(PNG)}).encode())}, 1, "image"),
    "data url": ({"body": {"data": "data:image/png;base64," + b64(PNG)}}, 1, "image"),
    "pixels": ({"body": {"pixels": STROKE.tolist()}}, 1, "pixels"),
    "images": ({"body": {"images": [b64(PNG)] * 3}}, 3, "multi_image"),
    "npy": ({"body": bytearray(npy_bytes(np.stack([STROKE] * 4)))}, 4, "multi_image"),
    "npy of one frame": ({"body": bytearray(npy_bytes(STROKE))}, 1, "multi_image"),
    "npy N x 1 x 28 x 28": ({"body": bytearray(npy_bytes(np.stack([STROKE[None]] * 2)))}, 2, "multi_image"),
    "v2 bytes": ({"body": v2_images(2)}, 2, "oip"),
    "v2 pixels": ({"body": {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 28, 28],
                                        "data": STROKE.reshape(-1).tolist()}]}}, 1, "oip"),
    "v2 json bytes": ({"body": bytearray(json.dumps(v2_images(1)).encode())}, 1, "oip"),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_is_read_into_its_images(name):
    row, count, kind = FORMATS[name]
    result = read(row)
    assert result.refusal is None and result.request is not None, result.refusal
    request = result.request
    assert len(request.images) == count and request.kind == kind and not request.explain
    assert request.many == (kind in ("multi_image", "oip"))
    assert request.topk == (1 if kind == "oip" else LIMITS.topk)
    assert (result.infer is not None) == result.v2 == (kind == "oip")
    for grey in request.images:
        assert grey.shape == (28, 28)
        np.testing.assert_allclose(as_unit(grey), STROKE / 255.0, atol=1e-6)


def test_topk_is_the_requests_own_where_it_asks():
    assert read({"body": {"data": b64(PNG), "topk": 10}}).request.topk == 10
    assert read({"body": {"pixels": STROKE.tolist(), "topk": 1}}).request.topk == 1
    assert read({"body": {"images": [b64(PNG)], "topk": 5}}).request.topk == 5
    assert wire.read({"body": PNG}, predictor.Limits(10, 7, 256)).request.topk == 7


def test_the_limit_on_images_is_the_limits_own():
    small = predictor.Limits(num_classes=10, topk=3, max_images=2)
    for row in ({"body": {"images": [b64(PNG)] * 3}}, {"body": bytearray(npy_bytes(np.stack([STROKE] * 3)))},
                {"body": v2_images(3)}):
        refused = wire.read(row, small).refusal
        assert isinstance(refused, InputTooLarge) and str(refused) == "3 images in one request; the limit is 2"
        assert wire.read(row, LIMITS).refusal is None


# ---------------------------------------------------------------- every refusal, its label and words


PIXELS = [[0] * 28] * 28
# A bad request of each kind and its label (and the words its message starts with): TorchServe's own formats, and
# bodies on an Open Inference Protocol path that are no such request.
ROWS = [
    ({"body": bytearray()}, "empty_body", "empty body: POST an image"),
    ({}, "empty_body", "empty request: send the image as the raw body"),
    ({"a": b"1", "b": b"2"}, "bad_request", "expected one body or one form field named 'data', got fields ['a', 'b']"),
    ({"body": "hello"}, "not_an_image", "text body is neither an image nor JSON"),
    ({"body": {"images": []}}, "empty_body", "no images in the request"),
    ({"body": {"images": "x"}}, "bad_json", '"images" must be a list of base64 images, got str'),
    ({"body": {"images": ["###"]}}, "bad_base64", "image 0: not valid base64"),
    ({"body": {"images": [b64(PNG), 7]}}, "bad_base64", "image 1: not a base64 string: got int"),
    ({"body": {"images": [b64(b"junk")]}}, "not_an_image", "image 0: not an image"),
    ({"body": {"data": 7}}, "bad_base64", '"data" must be a base64 string, got int'),
    ({"body": {"data": "%%%"}}, "bad_base64", '"data" is not valid base64'),
    ({"body": {"pixels": "x"}}, "bad_pixels", "pixels must be an array of numbers 0-255"),
    ({"body": {"pixels": [["7"] * 28] * 28}}, "bad_pixels", "pixels must be an array of numbers 0-255"),
    ({"body": {"pixels": [[math.nan] * 28] * 28}}, "bad_pixels", "pixels hold NaN or infinite values"),
    ({"body": {"pixels": [[0] * 28] * 27}}, "bad_pixels", "pixel array must be 28x28, got shape [27, 28]"),
    ({"body": {"image": "x"}}, "bad_json", 'JSON body needs "data" (base64 image), "pixels" (28x28 array) or'),
    ({"body": [1, 2, 3]}, "bad_json", 'JSON body must be an object with "data", "pixels" or "images", got list'),
    ({"body": {"pixels": PIXELS, "topk": 0}}, "bad_topk", "topk must be an integer from 1 to 10, got 0"),
    ({"body": bytearray(b'{"data": ')}, "bad_json", "invalid JSON: "),
    ({"body": bytearray(npy_bytes(np.zeros((300, 28, 28), np.uint8)))}, "too_many_images",
     "300 images in one request; the limit is 256"),
    ({"body": bytearray(npy_bytes(np.zeros((1, 28, 28), np.complex64)))}, "bad_npy",
     ".npy dtype must be an integer or float type, got <c8"),
    ({"body": bytearray(npy_bytes(np.full((1, 28, 28), np.nan, np.float32)))}, "bad_pixels",
     "pixels hold NaN or infinite values"),
    ({"body": bytearray(npy_bytes(np.full((1, 28, 28), 300, np.int16)))}, "bad_pixels",
     "pixel values must lie in 0..255, got 300..300"),
    ({"body": bytearray(npy_bytes(np.zeros((2, 28, 27), np.uint8)))}, "bad_pixels",
     "pixel frames must be N x 28 x 28, got shape [2, 28, 27]"),
    ({"body": bytearray(npy_bytes(np.zeros((1, 28, 28), np.uint8))[:-5])}, "bad_npy",
     ".npy holds 779 bytes of data, its header promises 784"),
    ({"body": bytearray(b"\x93NUMPY\x09\x00")}, "bad_npy", "not a valid .npy file: "),
    ({"body": bytearray(png_bytes(np.zeros((4, 40), np.uint8)))}, "image_too_small", "image too small: 40x4 pixels"),
]
V2_PATH_ROWS = [
    ({"body": bytearray()}, "empty_body", "empty body: an Open Inference Protocol request is a JSON object with"),
    ({"body": {"data": b64(PNG)}}, "bad_request", 'an Open Inference Protocol request is a JSON object with "inputs"'),
    ({"body": bytearray(PNG)}, "bad_request", 'an Open Inference Protocol request is a JSON object with "inputs"'),
    ({"body": bytearray(b"{not json")}, "bad_json", "invalid JSON: "),
]


@pytest.mark.parametrize("row, label, words", ROWS,
                         ids=[f"{index}-{label}" for index, (_, label, _) in enumerate(ROWS)])
def test_each_refusal_of_torchserves_own_formats_gets_its_label(row, label, words):
    result = read(row)
    assert result.request is None and not result.v2 and result.infer is None
    assert isinstance(result.refusal, InputError)
    refused = refusals.refusal(result.refusal)
    assert refused.reason == label and refused.message.startswith(words), refused.message
    assert refused.status == (413 if label == "too_many_images" else 400)


@pytest.mark.parametrize("row, label, words", V2_PATH_ROWS,
                         ids=[f"{index}-{label}" for index, (_, label, _) in enumerate(V2_PATH_ROWS)])
def test_a_body_on_an_open_inference_path_that_is_no_such_request_is_refused_in_its_shape(row, label, words):
    result = read(row, v2=True)
    assert result.v2 and result.request is None and result.infer is None and result.request_id == ""
    refused = refusals.refusal(result.refusal)
    assert refused.reason == label and refused.message.startswith(words), refused.message


BAD_INPUT_REASONS = {
    "empty body": "empty_body", "random bytes": "not_an_image", "text": "not_an_image",
    "truncated png": "unreadable_image", "decompression bomb 50000x50000": "image_too_large",
    "5000x5000 png header": "image_too_large", "1x1 image": "image_too_small", "json not an object": "bad_json",
    "bad base64": "bad_base64", "pixels of the wrong shape": "bad_pixels", "pixels with NaN": "bad_pixels",
    "pixels out of range": "bad_pixels",
}


@pytest.mark.parametrize("name", sorted(bad_inputs.REFUSED))
def test_every_refusal_of_the_bad_input_matrix_has_its_own_reason_and_words(name, test_split):
    body = bad_inputs.refused_bodies(test_split[0][0])[name]
    refused = refusals.refusal(refusal_of({"body": bytearray(body)}))
    assert refused.reason == BAD_INPUT_REASONS[name] and bad_inputs.REFUSED[name] in refused.message


# ---------------------------------------------------------------- read: how a request came, its refusal, a bug


def test_read_decodes_a_request_and_notes_how_it_came():
    result = read({"body": bytearray(png_bytes(STROKE))})
    assert result.refusal is None and not result.v2 and result.infer is None and result.request_id == ""
    assert len(result.request.images) == 1 and result.request.topk == 3 and not result.request.many
    assert not result.request.explain
    result = read({"data": bytearray(png_bytes(STROKE)), "explain": b"true"}, explain=True)
    assert result.refusal is None and result.request.explain
    result = read({"body": v2_images(2)})
    assert result.v2 and result.request_id == "r-1" and result.infer.id == "r-1"
    assert result.request.kind == "oip" and len(result.request.images) == 2
    result = read({"body": v2_images(1, "e-1")}, v2=True, explain=True)
    assert result.v2 and result.request.explain and result.infer.id == "e-1"


def test_read_refuses_a_bad_request_and_keeps_what_it_read():
    result = read({"body": bytearray(b"junk")})
    assert isinstance(result.refusal, InputError) and result.refusal.reason is Reason.NOT_AN_IMAGE
    assert result.request is None and not result.v2  # answered in TorchServe's shape
    bad_v2 = {"id": "b-2", "inputs": [{"name": "x", "datatype": "BOOL", "shape": [1], "data": [True]}]}
    result = read({"body": bad_v2})
    assert isinstance(result.refusal, InputError) and result.v2 and result.request_id == "b-2"  # in v2's shape
    result = read({"body": {**bad_v2, "id": 7}})
    assert result.v2 and result.request_id == "" and "\"id\" must be a string" in str(result.refusal)
    result = read({"body": {"images": [b64(png_bytes(STROKE))] * 17}}, explain=True)
    assert isinstance(result.refusal, InputTooLarge) and str(result.refusal) == (
        "17 images to explain in one request; the limit is 16")
    result = read({"body": v2_images(17, "x-17")}, v2=True, explain=True)
    assert isinstance(result.refusal, InputTooLarge) and result.v2 and result.request_id == "x-17"
    assert read({"body": {"images": [b64(png_bytes(STROKE))] * 16}}, explain=True).request.explain


def test_read_turns_a_bug_into_this_requests_refusal(monkeypatch, caplog):
    def broken(payload):
        raise RuntimeError("a bug")

    monkeypatch.setattr(wire, "read_body", broken)
    with caplog.at_level(logging.ERROR):
        result = read({"body": b"x"})
        on_v2 = read({"body": b"x"}, v2=True)
    assert isinstance(result.refusal, RuntimeError) and result.request is None
    assert isinstance(on_v2.refusal, RuntimeError) and on_v2.v2  # still answered in the protocol's shape
    assert caplog.text.count("unexpected error reading a request") == 2 and "RuntimeError: a bug" in caplog.text
    assert refusals.refusal(result.refusal).status == 500


def test_read_logs_no_error_for_a_bad_request(caplog):
    with caplog.at_level(logging.ERROR):
        assert isinstance(read({"body": bytearray(b"junk")}).refusal, InputError)
    assert caplog.text == ""


def test_read_of_the_binary_tensor_extension():
    header = json.dumps({"id": "b-1", "inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 28, 28],
                                                 "parameters": {"binary_data_size": 784}}]}).encode()
    body = header + STROKE.tobytes()
    for payload in (bytearray(body), body):
        result = read({"body": payload}, binary_length=str(len(header)))
        assert result.refusal is None and result.v2 and result.request_id == "b-1"
        np.testing.assert_allclose(result.request.images[0], STROKE / 255.0, atol=1e-6)
    parsed = read({"body": json.loads(json.dumps(v2_images(1)))}, binary_length="10")  # JSON a server parsed already
    assert parsed.refusal is None and parsed.v2
    refused = read({"body": bytearray(body)}, binary_length="12x")
    assert refused.v2 and "must be a byte count" in str(refused.refusal)  # the protocol's shape, though unread


# ---------------------------------------------------------------- the payload and the body


def test_request_payload_is_the_body_or_the_one_field():
    assert wire.request_payload({"data": b"1", "body": b"2"}) == b"1"
    assert wire.request_payload({"data": None, "body": b"2"}) == b"2"
    assert wire.request_payload({"body": {"a": 1}}) == {"a": 1}
    assert wire.request_payload({"file": b"3"}) == b"3"
    assert wire.request_payload({"data": b"1", "explain": b"true"}) == b"1"
    empty = refusal_of({})
    assert empty.reason is Reason.EMPTY_BODY and "curl --data-binary @digit.png" in str(empty)
    with pytest.raises(InputError) as raised:
        wire.request_payload({"a": b"1", "b": b"2"})
    assert raised.value.reason is Reason.BAD_REQUEST


def test_read_body_returns_bytes_or_parsed_json():
    png = png_bytes(STROKE)
    assert wire.read_body(bytearray(png)) == png and isinstance(wire.read_body(bytearray(png)), bytes)
    assert wire.read_body(png) == png
    npy = npy_bytes(np.zeros((1, 28, 28), np.uint8))
    assert wire.read_body(npy) == npy  # a .npy is never read as JSON, whatever follows its magic
    assert wire.read_body(b'  {"a": 1}') == {"a": 1} and wire.read_body(bytearray(b"[1, 2]")) == [1, 2]
    assert wire.read_body('{"a": 1}') == {"a": 1}
    document = {"data": "x"}
    assert wire.read_body(document) is document  # what TorchServe parsed already
    assert wire.read_body(b"") == b""
    for broken in (b'{"data": ', b"{\xff\xfe}", bytearray(b"[1,")):
        with pytest.raises(InputError, match="invalid JSON: ") as raised:
            wire.read_body(broken)
        assert raised.value.reason is Reason.BAD_JSON
    with pytest.raises(InputError, match="text body is neither an image nor JSON") as raised:
        wire.read_body("hello")
    assert raised.value.reason is Reason.NOT_AN_IMAGE


def test_read_binary_extension_splits_bytes_and_text_and_passes_parsed_json():
    assert wire.read_binary_extension(b'{"a": 1}rest', "8") == ({"a": 1}, b"rest")
    assert wire.read_binary_extension(bytearray(b'{"a": 1}rest'), "8") == ({"a": 1}, b"rest")
    assert wire.read_binary_extension('{"a": 1}rest', "8") == ({"a": 1}, b"rest")
    assert wire.read_binary_extension({"a": 1}, "8") == ({"a": 1}, b"")


def test_decode_body_and_parse_json_object():
    assert wire.decode_body(png_bytes(STROKE), LIMITS).kind == "image"
    assert wire.decode_body({"pixels": STROKE.tolist()}, LIMITS).kind == "pixels"
    assert wire.parse_json_object({"images": [b64(PNG)] * 2, "topk": 2}, LIMITS).topk == 2
    with pytest.raises(InputError, match="got NoneType"):
        wire.parse_json_object(None, LIMITS)
    with pytest.raises(InputError, match=r"got keys \['topk'\]"):
        wire.parse_json_object({"topk": 3}, LIMITS)


# ---------------------------------------------------------------- .npy files


def test_npy_frames_decode_in_every_number_type():
    frames = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    for dtype in (np.uint8, np.int16, np.int32, np.int64, np.float32, np.float64, ">f4", ">i2", "<u2"):
        decoded = wire.decode_npy_frames(npy_bytes(frames.astype(dtype)))
        assert decoded.shape == (5, 28, 28) and decoded.dtype == np.float32
        assert np.allclose(decoded, frames / 255.0)
    assert wire.decode_npy_frames(npy_bytes(frames[0].astype(np.uint8))).shape == (1, 28, 28)
    fortran = np.asfortranarray(frames.astype(np.uint8))
    assert np.allclose(wire.decode_npy_frames(npy_bytes(fortran)), frames / 255.0)
    channels = frames[:, None].astype(np.uint8)  # N x 1 x 28 x 28, as a batch of network inputs is shaped
    assert np.allclose(wire.decode_npy_frames(npy_bytes(channels)), frames / 255.0)
    assert np.allclose(wire.decode_npy_frames(npy_bytes(np.asfortranarray(channels))), frames / 255.0)


def test_npy_header_promising_huge_data_is_refused_before_allocating():
    header = npy_bytes(np.zeros((1, 28, 28), np.uint8))
    bomb = header.replace(b"'shape': (1, 28, 28), ", b"'shape': (99999, 28, 28),")[:len(header)]  # same length
    with pytest.raises(InputTooLarge, match="99999 images") as raised:
        wire.decode_npy_frames(bomb)
    assert raised.value.reason is Reason.TOO_MANY_IMAGES
    small = header.replace(b"'shape': (1, 28, 28)", b"'shape': (9, 28, 28)")
    with pytest.raises(InputError, match="promises") as raised:
        wire.decode_npy_frames(small)
    assert raised.value.reason is Reason.BAD_NPY
    with pytest.raises(InputTooLarge, match="3 images in one request; the limit is 2"):
        wire.decode_npy_frames(npy_bytes(np.zeros((3, 28, 28), np.uint8)), 2)


def _object_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([None, {"x": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


@pytest.mark.parametrize("array, reason, message", [
    (np.zeros((2, 28, 28), dtype=object), Reason.BAD_NPY, ".npy dtype must be an integer or float type, got |O"),
    (np.zeros((2, 28, 28), dtype=np.complex64), Reason.BAD_NPY, "dtype"),
    (np.zeros((2, 28, 28), dtype=np.float16), Reason.BAD_NPY, "dtype"),
    (np.zeros((2, 28, 28), dtype=bool), Reason.BAD_NPY, "dtype"),
    (np.full((1, 28, 28), np.nan, np.float32), Reason.BAD_PIXELS, "pixels hold NaN or infinite values"),
    (np.full((1, 28, 28), np.inf, np.float64), Reason.BAD_PIXELS, "pixels hold NaN or infinite values"),
    (np.full((1, 28, 28), 300, np.int16), Reason.BAD_PIXELS, "pixel values must lie in 0..255, got 300..300"),
    (np.full((1, 28, 28), -1, np.int16), Reason.BAD_PIXELS, "pixel values must lie in 0..255, got -1..-1"),
    (np.zeros((0, 28, 28), np.uint8), Reason.EMPTY_BODY, "no images in the request"),
    (np.zeros((28, 28, 2), np.uint8), Reason.BAD_PIXELS, "pixel frames must be N x 28 x 28, got shape [28, 28, 2]"),
    (np.zeros((2, 2, 28, 28), np.uint8), Reason.BAD_PIXELS, "pixel frames must be N x 28 x 28, got shape [2, 2, 28"),
    (np.zeros(784, np.uint8), Reason.BAD_PIXELS, "pixel frames must be N x 28 x 28, got shape [784]"),
], ids=["object", "complex", "float16", "bool", "nan", "inf", "over-255", "negative", "none", "28x28x2", "2 channels",
        "flat"])
def test_bad_npy_frames(array, reason, message):
    data = npy_bytes(array) if array.dtype != object else _object_npy()
    with pytest.raises(InputError) as raised:
        wire.decode_npy_frames(data)
    assert raised.value.reason is reason and message in str(raised.value), str(raised.value)


def test_truncated_and_garbage_npy_is_a_bad_npy():
    data = npy_bytes(np.zeros((2, 28, 28), np.uint8))
    for broken in (data[:6], data[:8], data[:40], b"\x93NUMPY\x09\x00junk", data[:-1], data + b"\x00"):
        with pytest.raises(InputError) as raised:
            wire.decode_npy_frames(broken)
        assert raised.value.reason is Reason.BAD_NPY, broken[:12]


# ---------------------------------------------------------------- JSON pixel arrays


def test_pixel_array_matches_the_same_image_as_png():
    pixels = np.zeros((28, 28), np.uint8)
    pixels[5:8, 6:22] = 255
    for row in range(8, 24):
        pixels[row, 20 - row // 2 : 23 - row // 2] = 255  # a "7"
    grey = wire.pixels_to_grey(pixels.tolist())
    assert grey.dtype == np.float32 and grey.shape == (28, 28)
    torch.testing.assert_close(preprocessing.normalize(preprocessing.to_mnist_geometry(grey)),
                               preprocessing.image_bytes_to_tensor(png_bytes(pixels)))


@pytest.mark.parametrize(
    "pixels,message",
    [
        ([[0] * 28] * 27, "pixel array must be 28x28, got shape [27, 28]"),
        ([[0] * 27] * 28, "pixel array must be 28x28, got shape [28, 27]"),
        ([0] * 784, "pixel array must be 28x28, got shape [784]"),
        ([[float("nan")] * 28] * 28, "pixels hold NaN or infinite values"),
        ([[math.inf] * 28] * 28, "pixels hold NaN or infinite values"),
        ([[1e300] * 28] * 28, "pixel values must lie in 0..255, got 1e+300..1e+300"),
        ([[300] * 28] * 28, "pixel values must lie in 0..255, got 300..300"),
        ([[-1] * 28] * 28, "pixel values must lie in 0..255, got -1..-1"),
        ([["a"] * 28] * 28, "pixels must be an array of numbers 0-255"),
        ([["7"] * 28] * 28, "pixels must be an array of numbers 0-255"),  # was converted once; a string is no number
        ([[None] * 28] * 28, "pixels must be an array of numbers 0-255"),
        ([[True] * 28] * 28, "pixels must be an array of numbers 0-255"),
        ([[[0, 0]] * 28] * 28, "pixel array must be 28x28, got shape [28, 28, 2]"),
        ("not an array", "pixels must be an array of numbers 0-255"),
    ],
    ids=["27-rows", "27-cols", "flat", "nan", "inf", "1e300", "over-255", "negative", "strings", "numeric strings",
         "nulls", "bools", "3d", "string"],
)
def test_bad_pixel_arrays(pixels, message):
    with pytest.raises(InputError) as raised:
        wire.pixels_to_grey(pixels)
    assert raised.value.reason is Reason.BAD_PIXELS and str(raised.value) == message


def test_pixel_values_are_scaled_to_unit_floats():
    pixels = np.arange(784).reshape(28, 28) % 256
    np.testing.assert_allclose(wire.pixels_to_grey(pixels.tolist()), pixels / 255.0, rtol=1e-6)
    np.testing.assert_allclose(wire.pixels_to_grey((pixels / 2).tolist()), pixels / 510.0, rtol=1e-6)


# ---------------------------------------------------------------- fuzzing what a worker reads


def assert_read_or_refused(result: wire.Read) -> bool:
    """A read request has 1..256 grey 2-D images and a topk in range; a refused one an InputError, never a bug.
    Whether it was read."""
    if result.refusal is not None:
        assert result.request is None
        assert isinstance(result.refusal, InputError), repr(result.refusal)  # any other exception is a bug (500)
        assert refusals.refusal(result.refusal).status in (400, 413)
        return False
    request = result.request
    assert 1 <= request.topk <= LIMITS.num_classes and 1 <= len(request.images) <= LIMITS.max_images
    for grey in request.images:
        assert grey.ndim == 2
        if grey.dtype != np.uint8:
            assert grey.dtype == np.float32 and np.isfinite(grey).all() and 0.0 <= grey.min() and grey.max() <= 1.0
    return True


def assert_preprocessed(request: predictor.Request) -> None:
    inputs, (refusal,) = predictor.preprocess([request], 10)
    assert refusal is None or isinstance(refusal, InputError)
    assert_network_input(inputs, len(request.images))


@FUZZ
@given(st.one_of(mutated_images(), st.binary(max_size=512)))
def test_any_bytes_become_a_request_or_an_input_error(data):
    result = read({"body": bytearray(data)})
    if assert_read_or_refused(result):
        assert result.request.kind in ("image", "multi_image", "pixels")
        assert_preprocessed(result.request)


@st.composite
def npy_files(draw) -> bytes:
    """Real .npy files with odd shapes and dtypes, then possibly a mutated header or body."""
    dtype = draw(st.sampled_from(["u1", "<i2", ">i4", "<f4", ">f8", "<c8", "|b1", "<M8[s]", "|S3", "<U2"]))
    shape = draw(st.lists(st.integers(0, 30), min_size=0, max_size=4).map(tuple))
    if math.prod(shape) > 40_000:
        shape = (1, 28, 28)
    array = np.zeros(shape, dtype=dtype)
    if array.dtype.kind in "iuf" and array.size:
        array[...] = draw(st.sampled_from([0, 7, 255, 256, -1, float("nan"), float("inf")])
                          if array.dtype.kind == "f" else st.sampled_from([0, 7, 255]))
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = bytearray(buffer.getvalue())
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@FUZZ
@given(st.one_of(npy_files(), st.binary(max_size=200).map(lambda tail: wire.NPY_MAGIC + tail)))
def test_any_npy_becomes_frames_or_an_input_error(data):
    result = read({"body": bytearray(data)})
    if not assert_read_or_refused(result):
        return
    request = result.request
    if data.startswith(wire.NPY_MAGIC):
        assert request.many and request.kind == "multi_image"
        frames = np.stack(request.images)
        assert frames.shape[1:] == (28, 28) and frames.dtype == np.float32
        assert frames.min() >= 0.0 and frames.max() <= 1.0
    assert_preprocessed(request)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=30) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=900,
)
base64_images = st.one_of(mutated_images(), st.sampled_from(SEEDS)).map(b64)


@st.composite
def json_requests(draw):
    """JSON documents shaped like requests: the real keys with arbitrary values, or anything at all."""
    grids = st.integers(0, 2**32 - 1).map(lambda seed: np.random.default_rng(seed).integers(0, 256, (28, 28)).tolist())
    pixel_rows = grids | st.lists(st.lists(st.floats(-10, 300) | st.integers(-5, 300), min_size=27, max_size=29),
                                  min_size=27, max_size=29)
    topk = st.integers(-1, 12) | json_values
    document = draw(st.one_of(
        json_values,
        st.fixed_dictionaries({"pixels": pixel_rows | json_values}, optional={"topk": topk}),
        st.fixed_dictionaries({"data": base64_images | st.text(max_size=40) | json_values}, optional={"topk": topk}),
        st.fixed_dictionaries({"images": st.lists(base64_images | st.text(max_size=20), max_size=5) | json_values},
                              optional={"topk": topk}),
    ))
    return document


def as_row(document, form: str) -> dict:
    if form == "parsed":  # as TorchServe hands over application/json bodies
        return {"body": document}
    text = json.dumps(document, allow_nan=True)
    return {"body": bytearray(text.encode()) if form == "bytes" else text}


@FUZZ
@given(json_requests(), st.sampled_from(["parsed", "bytes", "text"]), st.booleans())
def test_any_json_becomes_a_request_or_an_input_error(document, form, explain):
    result = read(as_row(document, form), explain=explain)
    if assert_read_or_refused(result):
        assert result.request.explain == explain and len(result.request.images) <= (16 if explain else 256)
        assert_preprocessed(result.request)


DATATYPES = ["BYTES", "UINT8", "FP32", "INT64", "FP64", "UINT16", "FP16", "BOOL", "STRING", 7]


@st.composite
def v2_documents(draw) -> dict:
    """Open Inference Protocol requests: a real tensor's fields with plausible or arbitrary values, or a field
    missing, in the protocol's other fields too."""
    datatype = draw(st.sampled_from(DATATYPES))
    count = draw(st.integers(0, 3))
    shapes = st.sampled_from([[count], [count, 1], [count, 28, 28], [28, 28], [count, 1, 28, 28], [count, 27, 28]])
    shape = draw(shapes | json_values)
    pixels = st.lists(st.integers(-1, 256) | st.floats(-1, 256), min_size=784 * count, max_size=784 * count)
    images = st.lists(base64_images | st.text(max_size=8) | st.integers(), min_size=count, max_size=count)
    ink = st.integers(0, 2**32 - 1).map(
        lambda seed: (np.random.default_rng(seed).integers(0, 2, 784 * count) * 255).tolist())
    data = draw(st.one_of(pixels, images, ink, json_values,
                          ink.map(lambda flat: np.asarray(flat).reshape(-1, 28, 28).tolist() if flat else [])))
    tensor = {"name": draw(st.sampled_from(["x", 7])), "datatype": datatype, "shape": shape, "data": data}
    for key in draw(st.lists(st.sampled_from(["name", "datatype", "shape", "data"]), max_size=1)):
        del tensor[key]
    if draw(st.booleans()):
        tensor["parameters"] = draw(st.sampled_from([{}, {"binary_data_size": 4}, []]) | json_values)
    document = {"inputs": draw(st.sampled_from([[tensor], [tensor, tensor], [], tensor]))}
    optional = st.fixed_dictionaries({}, optional={
        "id": st.text(max_size=8) | json_values,
        "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["probabilities", "labels", "attributions",
                                                                            "images", "logits"])},
                                                  optional={"parameters": st.sampled_from([{"binary_data": True},
                                                                                           {"binary_data": 1}, []])}),
                            max_size=3) | json_values,
        "parameters": st.sampled_from([{"binary_data_output": True}, {"binary_data_output": "yes"}, 3]),
    })
    return {**document, **draw(optional)}


@FUZZ
@given(v2_documents(), st.sampled_from(["parsed", "bytes", "text"]), st.booleans(), st.booleans())
def test_any_v2_document_becomes_a_request_or_an_input_error(document, form, on_v2_path, explain):
    result = read(as_row(document, form), v2=on_v2_path, explain=explain)
    assert result.v2  # it has "inputs": answered in the protocol's shape, read or refused
    if isinstance(document.get("id"), str):
        assert result.request_id == document["id"]
    if assert_read_or_refused(result):
        assert result.request.kind == "oip" and result.request.many and result.infer is not None
        assert result.infer.count == len(result.request.images) and result.request.explain == explain
        assert_preprocessed(result.request)


@FUZZ
@given(v2_documents(), st.binary(max_size=64) | st.sampled_from([STROKE.tobytes(), struct.pack("<I", 3) + b"abc"]),
       st.sampled_from(["exact", "short", "long", "junk"]))
def test_any_body_in_the_binary_tensor_extension_becomes_a_request_or_an_input_error(document, binary, length):
    header = json.dumps(document, allow_nan=True).encode()
    declared = {"exact": str(len(header)), "short": str(max(len(header) - 3, 0)),
                "long": str(len(header) + len(binary) + 1), "junk": "12x"}[length]
    result = read({"body": bytearray(header + binary)}, binary_length=declared)
    assert result.v2
    if assert_read_or_refused(result):
        assert result.request.kind == "oip"
        assert_preprocessed(result.request)


def test_a_binary_pixel_tensor_of_real_bytes_is_read_like_its_json():
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 28, 28],
                                     "parameters": {"binary_data_size": 784 * 4}}]}).encode()
    binary = read({"body": header + STROKE.astype("<f4").tobytes()}, binary_length=str(len(header)))
    plain = read({"body": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 28, 28],
                                       "data": STROKE.reshape(-1).tolist()}]}})
    np.testing.assert_array_equal(binary.request.images[0], plain.request.images[0])
    assert open_inference.BINARY_DTYPES["FP32"] == "<f4"


# ---------------------------------------------------------------- headers and values the parsers trip over: 400s, not 500s
NPY_ONE_FRAME = npy_bytes(np.zeros((1, 28, 28), np.uint8))


def npy_with_shape(shape: str) -> bytes:
    """A .npy of one blank frame whose header declares `shape` (the header's length kept)."""
    header = NPY_ONE_FRAME[: NPY_ONE_FRAME.index(b"\n") + 1]
    text = header[10:].decode("latin1").replace("(1, 28, 28)", shape)
    text = text.rstrip("\n").rstrip(" ").ljust(len(header) - 11) + "\n"
    assert len(text) == len(header) - 10
    return NPY_ONE_FRAME[:10] + text.encode("latin1") + NPY_ONE_FRAME[len(header):]


def test_a_npy_header_numpy_cannot_tokenize_is_a_bad_npy():
    broken = NPY_ONE_FRAME.replace(b"(1, 28, 28), }", b"(1, 28, 28, } ")
    assert len(broken) == len(NPY_ONE_FRAME)
    refused = read({"body": bytearray(broken)}).refusal
    assert isinstance(refused, InputError) and refused.reason is Reason.BAD_NPY, repr(refused)


@pytest.mark.parametrize("shape", ["(True, 28, 28)", "(1, True, 28, 28)"])
def test_a_npy_header_with_a_bool_in_its_shape_is_refused(shape):
    """True == 1, but no size: numpy's reshape would raise TypeError (a 500)."""
    refused = read({"body": bytearray(npy_with_shape(shape))}).refusal
    assert isinstance(refused, InputError) and refused.reason is Reason.BAD_PIXELS, repr(refused)


def test_npy_with_shape_writes_a_header_numpy_reads():
    """The helper above is sound: its header with an ordinary shape is read as numpy wrote it."""
    assert npy_with_shape("(1, 28, 28)") == NPY_ONE_FRAME
    assert read({"body": bytearray(npy_with_shape("(28, 28)"))}).request.images[0].shape == (28, 28)


HUGE = 10 ** 400  # a JSON integer: Python reads it exactly; no float holds it


@pytest.mark.parametrize("body", [
    {"pixels": [[HUGE] * 28] * 28},
    {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [28, 28], "data": [HUGE] * 784}]},
], ids=["json pixels", "v2 data"])
def test_a_pixel_too_large_for_a_float_is_refused(body):
    refused = read({"body": bytearray(json.dumps(body).encode())}).refusal
    assert isinstance(refused, InputError) and refused.reason is Reason.BAD_PIXELS, repr(refused)
