"""The steps of DigitHandler.handle, each a function tested on its own, without a server or a model:
read -> preprocess -> predict -> format."""
import base64
import logging

import numpy as np
import pytest
import torch

from handler import digit_handler, open_inference
from handler.batch import BatchRequest
from handler.digit_handler import format_answer, format_refusal, preprocess_batch, read_request
from handler.wire import DecodedRequest
from model.preprocessing import InputError, InputTooLarge, Reason
from tests.support.handler_context import GRPC_REQUEST, REST_REQUEST
from tests.support.images import png_bytes

STROKE = np.zeros((28, 28), np.uint8)
STROKE[6:22, 12:16] = 255  # a "1"
BLANK = np.zeros((28, 28), np.uint8)
LABELS = [str(digit) for digit in range(10)]


def read(row, headers=REST_REQUEST) -> BatchRequest:
    return read_request(0, row, headers, default_topk=3, num_classes=10, max_images=256)


def v2_images(count: int, request_id: str = "r-1") -> dict:
    return {"id": request_id, "inputs": [{"name": "x", "datatype": "BYTES", "shape": [count],
                                          "data": [base64.b64encode(png_bytes(STROKE)).decode()] * count}]}


# ---------------------------------------------------------------- read


def test_read_decodes_a_request_and_notes_how_it_came():
    request = read({"body": bytearray(png_bytes(STROKE))})
    assert request.answered and not request.grpc and not request.explain and request.infer is None
    assert len(request.decoded.images) == 1 and request.decoded.topk == 3 and not request.decoded.many
    request = read({"data": bytearray(png_bytes(STROKE)), "explain": b"true"}, GRPC_REQUEST)
    assert request.answered and request.grpc and request.explain
    request = read({"body": v2_images(2)})
    assert request.infer.id == "r-1" and request.decoded.kind == "oip" and len(request.decoded.images) == 2


def test_read_refuses_a_bad_request_and_keeps_what_it_read():
    request = read({"body": bytearray(b"junk")})
    assert isinstance(request.refusal, InputError) and request.refusal.reason is Reason.NOT_AN_IMAGE
    assert request.body == b"junk" and request.decoded is None
    bad_v2 = {"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1], "data": [True]}]}
    request = read({"body": bad_v2})
    assert isinstance(request.refusal, InputError) and request.body == bad_v2  # answered in v2's shape
    request = read({"body": {"images": [base64.b64encode(png_bytes(STROKE)).decode()] * 17}},
                   {**REST_REQUEST, "explain": "True"})
    assert isinstance(request.refusal, InputTooLarge) and "17 images to explain" in str(request.refusal)


def test_read_turns_a_bug_into_this_requests_refusal(monkeypatch, caplog):
    def broken(row):
        raise RuntimeError("a bug")

    monkeypatch.setattr(digit_handler, "read_body", broken)
    with caplog.at_level(logging.ERROR):
        request = read_request(4, {"body": b"x"}, REST_REQUEST, 3, 10, 256)
    assert isinstance(request.refusal, RuntimeError) and request.body is None
    assert "unexpected error parsing request 4" in caplog.text


# ---------------------------------------------------------------- preprocess


def decoded(*images, many=False) -> BatchRequest:
    return BatchRequest(decoded=DecodedRequest(list(images), 3, many=many))


def test_preprocess_keeps_the_inputs_of_the_requests_still_answered_and_refuses_the_others():
    requests = [decoded(STROKE), decoded(STROKE, BLANK, many=True), decoded(BLANK), decoded(STROKE, STROKE, many=True)]
    inputs = preprocess_batch(requests, 20)
    assert [request.answered for request in requests] == [True, False, False, True]
    assert str(requests[1].refusal) == "image 1: blank image: no digit found"
    assert requests[2].refusal.reason is Reason.BLANK_IMAGE
    assert [requests[0].rows, requests[3].rows] == [range(0, 1), range(1, 3)]
    alone, _ = digit_handler.preprocess([DecodedRequest([STROKE], 3)], 20)
    assert inputs.shape == (3, 1, 28, 28) and all(torch.equal(row, alone[0]) for row in inputs)


def test_preprocess_of_a_batch_all_answered_or_all_refused():
    requests = [decoded(STROKE), decoded(STROKE, STROKE, many=True)]
    inputs = preprocess_batch(requests, 20)
    assert inputs.shape == (3, 1, 28, 28) and [request.rows for request in requests] == [range(0, 1), range(1, 3)]
    assert preprocess_batch([decoded(BLANK)], 20).shape == (0, 1, 28, 28)
    assert preprocess_batch([], 20).shape == (0, 1, 28, 28)


@pytest.mark.usefixtures("broken_geometry")
def test_a_bug_in_the_batched_preprocessing_costs_only_its_request():
    requests = [decoded(STROKE), decoded(np.pad(STROKE, ((0, 1), (0, 1)))), decoded(STROKE)]
    inputs = preprocess_batch(requests, 20)
    assert isinstance(requests[1].refusal, RuntimeError) and inputs.shape == (2, 1, 28, 28)
    assert [requests[0].rows, requests[2].rows] == [range(0, 1), range(1, 2)]


# ---------------------------------------------------------------- format


def ranked(probabilities: torch.Tensor, topk: int = 10):
    values, indices = torch.topk(probabilities, topk)
    return values.tolist(), indices.tolist()


PROBABILITIES = torch.softmax(torch.arange(30, dtype=torch.float32).reshape(3, 10) % 7, dim=1)


def test_format_answers_each_request_from_its_own_rows():
    values, indices = ranked(PROBABILITIES)
    one = BatchRequest(decoded=DecodedRequest([STROKE], 2), rows=range(2, 3))
    answer, best = format_answer(one, PROBABILITIES, values, indices, LABELS, "digits", "1.0")
    assert answer == digit_handler.format_prediction(PROBABILITIES[2], LABELS, 2) and best == [answer["label"]]
    many = BatchRequest(decoded=DecodedRequest([STROKE, STROKE], 3, many=True), rows=range(0, 2),
                        explanation=[{"method": "m0"}, {"method": "m1"}])
    answer, best = format_answer(many, PROBABILITIES, values, indices, LABELS, "digits", "1.0")
    assert [len(prediction["topk"]) for prediction in answer["predictions"]] == [3, 3]
    assert [prediction["method"] for prediction in answer["predictions"]] == ["m0", "m1"]
    assert best == [prediction["label"] for prediction in answer["predictions"]] == [LABELS[int(row.argmax())]
                                                                                     for row in PROBABILITIES[:2]]


def test_format_answers_a_v2_request_in_the_protocols_shape():
    values, indices = ranked(PROBABILITIES)
    infer = open_inference.parse_infer_request(v2_images(2), 256)
    request = BatchRequest(infer=infer, decoded=DecodedRequest([STROKE, STROKE], 1, many=True, kind="oip"),
                           rows=range(1, 3))
    answer, best = format_answer(request, PROBABILITIES, values, indices, LABELS, "digits", "2.0")
    assert answer["id"] == "r-1" and answer["model_version"] == "2.0"
    outputs = {tensor["name"]: tensor for tensor in answer["outputs"]}
    assert outputs["labels"]["data"] == best == [LABELS[int(row.argmax())] for row in PROBABILITIES[1:]]
    np.testing.assert_allclose(outputs["probabilities"]["data"], PROBABILITIES[1:].reshape(-1), atol=1e-6)


def test_format_refusal_gives_each_its_status_and_shape():
    error = InputError("not an image", Reason.NOT_AN_IMAGE)
    assert format_refusal(BatchRequest(refusal=error, body=b"x"), "digits", "1.0") == (
        400, "Bad Request", {"code": 400, "type": "InputError", "message": "not an image"})
    too_many = InputTooLarge("300 images", Reason.TOO_MANY_IMAGES)
    assert format_refusal(BatchRequest(refusal=too_many), "digits", "1.0")[:2] == (413, "Payload Too Large")
    assert format_refusal(BatchRequest(refusal=RuntimeError("secret")), "digits", "1.0") == (
        500, "Internal Server Error", {"code": 500, "type": "InternalError",
                                       "message": "internal error while reading the input"})
    body = v2_images(1, "g-7")
    assert format_refusal(BatchRequest(refusal=error, body=body), "digits", "1.0")[2] == {"error": "not an image"}
    status, _, in_band = format_refusal(BatchRequest(refusal=error, body=body, grpc=True), "digits", "1.0")
    assert status == 400 and in_band["id"] == "g-7" and in_band["outputs"][0]["data"] == [
        {"code": 400, "error": "not an image"}]

