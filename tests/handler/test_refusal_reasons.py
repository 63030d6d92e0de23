"""The Reason label of digits_refusals_total: typed where each InputError is raised, never read from its wording."""
import ast
import base64
import copy
import pickle

import numpy as np
import pytest

from handler import digit_handler, open_inference, wire
from model import preprocessing
from model.preprocessing import InputError, InputTooLarge, Reason
from tests.support import ROOT
from tests.support.images import npy_bytes, png_bytes
from tests.support.metric_labels import LABEL_VALUES

# Where requests are refused: every InputError of the bundle is raised in these files.
RAISING_FILES = ("model/preprocessing.py", "handler/wire.py", "handler/open_inference.py", "handler/digit_handler.py")


def test_the_labels_are_the_fixed_set_the_alerts_and_dashboard_know():
    assert {reason.value for reason in Reason} | {digit_handler.INTERNAL_REASON} == LABEL_VALUES["Reason"]


@pytest.mark.parametrize("reason", list(Reason))
def test_the_label_is_the_raised_reason_whatever_the_message_says(reason):
    labels = {digit_handler.refusal_reason(InputError(message, reason))
              for message in ("blank image: no digit found", "not an image", "topk", "", "reworded entirely")}
    assert labels == {reason.value}
    error = InputError("something", reason)
    assert digit_handler.refusal_reason(error.in_image(4)) == reason.value  # a multi-image request's refusal
    assert str(error.in_image(4)) == "image 4: something"
    for twin in (copy.copy(error), pickle.loads(pickle.dumps(error))):
        assert twin.reason is reason and str(twin) == "something"
    status, _, body, counted = digit_handler.refusal_answer(error)
    assert (status, body["type"], counted) == (400, "InputError", ("InputError", reason.value))


def test_a_reason_outside_the_fixed_set_fails_where_it_is_raised():
    with pytest.raises(ValueError, match="not_a_reason"):
        InputError("message", "not_a_reason")
    with pytest.raises(TypeError):
        InputError("a message without a reason")


def reason_of(call: ast.Call) -> ast.expr | None:
    if len(call.args) == 2:
        return call.args[1]
    return next((keyword.value for keyword in call.keywords if keyword.arg == "reason"), None)


def test_every_raise_site_names_a_reason_from_the_fixed_set():
    """Read from the source: each InputError or InputTooLarge built in the bundle gets Reason.<member> (or, where a
    refusal is re-raised for one image of many, the reason of the error it wraps)."""
    sites = []
    for path in RAISING_FILES:
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            name = getattr(node, "func", None)
            name = getattr(name, "id", None) or getattr(name, "attr", None)
            if isinstance(node, ast.Call) and name in ("InputError", "InputTooLarge"):
                reason = reason_of(node)
                where = f"{path}:{node.lineno}"
                assert isinstance(reason, ast.Attribute), f"{where}: no reason"
                if isinstance(reason.value, ast.Name) and reason.value.id == "Reason":
                    assert reason.attr in Reason.__members__, f"{where}: Reason.{reason.attr} is not a Reason"
                else:
                    assert reason.attr == "reason", f"{where}: the reason is neither Reason.<member> nor kept"
                sites.append(where)
    assert len(sites) > 50, sites  # the scan sees the raise sites (there were 56 when this test was written)


STROKE = np.zeros((28, 28), np.uint8)
STROKE[6:22, 12:16] = 255  # a "1"


def v2(tensor: dict, **document) -> dict:
    return {"inputs": [{"name": "x", **tensor}], **document}


PIXELS = {"datatype": "UINT8", "shape": [28, 28]}
# A bad request of each kind that the bad-input matrices of the other tests do not reach, and its label: TorchServe's
# own formats (read by wire.parse_request) and Open Inference Protocol requests (open_inference.parse_infer_request).
ROWS = [
    ({"body": bytearray()}, "empty_body"),
    ({}, "empty_body"),
    ({"a": b"1", "b": b"2"}, "bad_request"),
    ({"body": "hello"}, "not_an_image"),
    ({"body": {"images": []}}, "empty_body"),
    ({"body": {"images": "x"}}, "bad_json"),
    ({"body": {"images": ["###"]}}, "bad_base64"),
    ({"body": {"images": [base64.b64encode(b"junk").decode()]}}, "not_an_image"),
    ({"body": {"data": 7}}, "bad_base64"),
    ({"body": {"pixels": "x"}}, "bad_pixels"),
    ({"body": {"image": "x"}}, "bad_json"),
    ({"body": {"pixels": [[0] * 28] * 28, "topk": 0}}, "bad_topk"),
    ({"body": bytearray(b'{"data": ')}, "bad_json"),
    ({"body": bytearray(npy_bytes(np.zeros((300, 28, 28), np.uint8)))}, "too_many_images"),
    ({"body": bytearray(npy_bytes(np.zeros((1, 28, 28), np.complex64)))}, "bad_npy"),
    ({"body": bytearray(npy_bytes(np.full((1, 28, 28), np.nan, np.float32)))}, "bad_npy"),
    ({"body": bytearray(npy_bytes(np.full((1, 28, 28), 300, np.int16)))}, "bad_pixels"),
    ({"body": bytearray(npy_bytes(np.zeros((1, 28, 28), np.uint8))[:-5])}, "bad_npy"),
    ({"body": bytearray(b"\x93NUMPY\x09\x00")}, "bad_npy"),
    ({"body": bytearray(png_bytes(np.zeros((4, 40), np.uint8)))}, "image_too_small"),
]
INFER = [
    ({"id": 7, **v2(PIXELS, data=[0] * 784)}, "bad_request"),
    ({"inputs": "x"}, "bad_request"),
    (v2({"datatype": "UINT8"}), "bad_request"),
    ({"inputs": [{"name": 1, **PIXELS, "data": [0] * 784}]}, "bad_request"),
    (v2({**PIXELS, "shape": "28x28", "data": []}), "bad_request"),
    (v2({**PIXELS, "data": [0] * 784}, outputs="labels"), "bad_request"),
    (v2({**PIXELS, "data": [0] * 784}, outputs=[{"name": "logits"}]), "bad_request"),
    (v2({**PIXELS, "data": "x"}), "bad_request"),
    (v2({**PIXELS, "data": ["a"] * 784}), "bad_request"),
    (v2({**PIXELS, "data": [0] * 783}), "bad_request"),
    (v2({**PIXELS, "data": [float("nan")] * 784}), "bad_request"),
    (v2({**PIXELS, "data": [300] * 784}), "bad_pixels"),
    (v2({**PIXELS, "shape": [2, 27, 28], "data": [0] * 1512}), "bad_request"),
    (v2({**PIXELS, "shape": [300, 28, 28], "data": []}), "too_many_images"),
    (v2({**PIXELS, "shape": [0, 28, 28], "data": []}), "empty_body"),
    (v2({"datatype": "FP16", "shape": [28, 28], "data": [0] * 784}), "bad_request"),
    (v2({"datatype": "BYTES", "shape": [1, 2], "data": ["", ""]}), "bad_request"),
    (v2({"datatype": "BYTES", "shape": [2], "data": [""]}), "bad_request"),
    (v2({"datatype": "BYTES", "shape": [1], "data": [7]}), "bad_request"),
    (v2({"datatype": "BYTES", "shape": [1], "data": ["%%%"]}), "bad_request"),
]


@pytest.mark.parametrize("row, label", ROWS, ids=[f"{index}-{label}" for index, (_, label) in enumerate(ROWS)])
def test_each_refusal_of_torchserves_own_formats_gets_its_label(row, label):
    with pytest.raises(InputError) as refused:
        wire.parse_request(row, 3, 10, max_images=256)
    assert digit_handler.refusal_reason(refused.value) == label


@pytest.mark.parametrize("document, label", INFER, ids=[f"{index}-{label}" for index, (_, label) in enumerate(INFER)])
def test_each_refusal_of_an_open_inference_request_gets_its_label(document, label):
    with pytest.raises(InputError) as refused:
        open_inference.parse_infer_request(document, 256)
    assert digit_handler.refusal_reason(refused.value) == label


def test_decoded_images_that_are_refused_get_their_labels():
    encoded = open_inference.parse_infer_request(v2({"datatype": "BYTES", "shape": [1],
                                                     "data": [base64.b64encode(b"junk").decode()]}), 256)
    with pytest.raises(InputError) as refused:
        wire.decode_infer_request(encoded)
    assert str(refused.value).startswith("image 0: ") and refused.value.reason is Reason.NOT_AN_IMAGE
    blank = np.zeros((28, 28), np.uint8)
    requests = [wire.DecodedRequest([blank], 3), wire.DecodedRequest([STROKE, blank], 3, many=True)]
    _, refusals = digit_handler.preprocess(requests, 20)
    assert [refusal.reason for refusal in refusals] == [Reason.BLANK_IMAGE, Reason.BLANK_IMAGE]
    assert str(refusals[1]).startswith("image 1: ")
    _, (odd,) = preprocessing.to_mnist_geometry_batch([np.zeros((2, 2, 2))])
    assert odd.reason is Reason.UNREADABLE_IMAGE
    with pytest.raises(InputError) as refused:
        preprocessing.frames_to_tensor(np.zeros((2, 28, 28), np.float32))
    assert str(refused.value).startswith("image 0: ") and refused.value.reason is Reason.BLANK_IMAGE
    with pytest.raises(InputTooLarge) as refused:
        digit_handler.check_explained_count(wire.DecodedRequest([STROKE] * 17, 3))
    assert digit_handler.refusal_reason(refused.value) == "too_many_images"
