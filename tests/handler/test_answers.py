"""Answers on the wire (handler/answers.py): a request's Prediction in TorchServe's shape or the Open Inference
Protocol's, and a refusal's status and body in either, in band over gRPC."""
import base64
import json

import numpy as np
import pytest
import torch

from handler import answers, open_inference, refusals, wire
from handler.predictor import Limits, Prediction, Request
from handler.refusals import InputError, InputTooLarge, Reason
from tests.support.images import png_bytes

STROKE = np.zeros((28, 28), np.uint8)
STROKE[6:22, 12:16] = 255  # a "1"
LABELS = [str(digit) for digit in range(10)]
PROBABILITIES = torch.softmax(torch.arange(30, dtype=torch.float32).reshape(3, 10) % 7, dim=1)


def prediction_of(rows: range, explanations=()) -> Prediction:
    """The Prediction of the batch's `rows` (as Predictor.predict makes it): every class ranked."""
    values, indices = torch.topk(PROBABILITIES, 10)
    values, indices = values.tolist(), indices.tolist()
    return Prediction(values[rows.start:rows.stop], indices[rows.start:rows.stop],
                      PROBABILITIES[rows.start:rows.stop], LABELS, list(explanations))


def v2_images(count: int, request_id: str = "r-1", **document) -> dict:
    return {"id": request_id, "inputs": [{"name": "x", "datatype": "BYTES", "shape": [count],
                                          "data": [base64.b64encode(png_bytes(STROKE)).decode()] * count}], **document}


def infer_read(document: dict) -> wire.Read:
    infer = open_inference.parse_infer_request(document, 256)
    return wire.Read(request=wire.decode_infer_request(infer), infer=infer, v2=True, request_id=infer.id)


# ---------------------------------------------------------------- ranked


def test_ranked_answers_one_image_best_first():
    values, indices = torch.topk(torch.tensor([0.1, 0.6, 0.3]), 2)
    answer = answers.ranked(values.tolist(), indices.tolist(), ["a", "b", "c"])
    assert answer["label"] == "b" and answer["index"] == 1 and answer["probability"] == pytest.approx(0.6)
    assert [entry["label"] for entry in answer["topk"]] == ["b", "c"]
    assert answer == {"label": "b", "index": 1, "probability": answer["probability"], "topk": [
        {"label": "b", "index": 1, "probability": answer["probability"]},
        {"label": "c", "index": 2, "probability": answer["topk"][1]["probability"]}]}


def test_ranked_rounds_probabilities_to_six_digits():
    answer = answers.ranked([0.123456789, 0.0000004], [3, 0], LABELS)
    assert [entry["probability"] for entry in answer["topk"]] == [0.123457, 0.0]


# ---------------------------------------------------------------- TorchServe's own answers


def test_torchserve_answer_answers_each_request_from_its_own_rows():
    one = answers.torchserve_answer(Request([STROKE], 2), prediction_of(range(2, 3)))
    values, indices = torch.topk(PROBABILITIES[2], 2)
    assert one == answers.ranked(values.tolist(), indices.tolist(), LABELS)
    many = answers.torchserve_answer(Request([STROKE, STROKE], 3, many=True),
                                     prediction_of(range(0, 2), [{"method": "m0"}, {"method": "m1"}]))
    assert list(many) == ["predictions"]
    assert [len(prediction["topk"]) for prediction in many["predictions"]] == [3, 3]
    assert [prediction["method"] for prediction in many["predictions"]] == ["m0", "m1"]
    assert [prediction["label"] for prediction in many["predictions"]] == [LABELS[int(row.argmax())]
                                                                           for row in PROBABILITIES[:2]]


def test_a_multi_image_request_of_one_image_is_still_a_list():
    answer = answers.torchserve_answer(Request([STROKE], 3, many=True), prediction_of(range(1, 2)))
    assert len(answer["predictions"]) == 1
    assert answer["predictions"][0]["label"] == LABELS[int(PROBABILITIES[1].argmax())]


def test_the_best_labels_of_a_prediction_are_its_images_labels():
    assert prediction_of(range(0, 3)).best == [LABELS[int(row.argmax())] for row in PROBABILITIES]


# ---------------------------------------------------------------- the Open Inference Protocol's answers


def test_v2_answer_is_in_the_protocols_shape():
    read = infer_read(v2_images(2))
    answer = answers.v2_answer(read.infer, prediction_of(range(1, 3)), "digits", "2.0")
    assert answer["id"] == "r-1" and answer["model_name"] == "digits" and answer["model_version"] == "2.0"
    outputs = {tensor["name"]: tensor for tensor in answer["outputs"]}
    assert list(outputs) == ["probabilities", "labels"]
    assert outputs["labels"]["data"] == prediction_of(range(1, 3)).best == [LABELS[int(row.argmax())]
                                                                            for row in PROBABILITIES[1:]]
    assert outputs["probabilities"]["shape"] == [2, 10]
    np.testing.assert_allclose(outputs["probabilities"]["data"], PROBABILITIES[1:].reshape(-1), atol=1e-6)


def test_a_v2_explanation_adds_attributions_and_images():
    infer = open_inference.parse_infer_request(v2_images(1), 256, explain=True)
    fields = {"image": np.full((28, 28), 0.5).tolist(), "attributions": np.full((28, 28), 0.25).tolist(),
              "method": "m", "steps": 32, "baseline": "black"}
    answer = answers.v2_answer(infer, prediction_of(range(0, 1), [fields]), "digits", "1.0")
    outputs = {tensor["name"]: tensor for tensor in answer["outputs"]}
    assert list(outputs) == ["probabilities", "labels", "attributions", "images"]
    assert outputs["attributions"]["data"] == [0.25] * 784 and outputs["images"]["data"] == [0.5] * 784


# ---------------------------------------------------------------- reply: a prediction


def test_reply_to_a_prediction_is_json_with_status_200():
    read = wire.Read(request=Request([STROKE], 3))
    reply = answers.reply(read, prediction_of(range(0, 1)), "digits", "1.0")
    assert (reply.status, reply.phrase, reply.binary_length) == (200, None, None)
    assert json.loads(reply.body) == answers.torchserve_answer(read.request, prediction_of(range(0, 1)))


def test_reply_to_a_v2_prediction_is_binary_only_where_asked_and_never_in_band():
    asked = infer_read(v2_images(1, parameters={"binary_data_output": True}))
    reply = answers.reply(asked, prediction_of(range(0, 1)), "digits", "1.0")
    assert isinstance(reply.body, bytes) and reply.binary_length is not None and reply.status == 200
    header = json.loads(reply.body[:reply.binary_length])
    assert [tensor["parameters"]["binary_data_size"] for tensor in header["outputs"]] == [40, 5]
    in_band = answers.reply(asked, prediction_of(range(0, 1)), "digits", "1.0", in_band=True)
    assert in_band.binary_length is None  # TorchServe's gRPC frontend builds its answer from this JSON
    assert json.loads(in_band.body) == answers.v2_answer(asked.infer, prediction_of(range(0, 1)), "digits", "1.0")
    plain = answers.reply(infer_read(v2_images(1)), prediction_of(range(0, 1)), "digits", "1.0")
    assert plain.binary_length is None
    assert json.loads(plain.body)["outputs"][1]["data"] == prediction_of(range(0, 1)).best


# ---------------------------------------------------------------- reply: a refusal


def test_reply_gives_each_refusal_its_status_and_shape():
    error = InputError("not an image", Reason.NOT_AN_IMAGE)
    reply = answers.reply(wire.Read(refusal=error), error, "digits", "1.0")
    assert (reply.status, reply.phrase, json.loads(reply.body)) == (
        400, "Bad Request", {"code": 400, "type": "InputError", "message": "not an image"})
    too_many = InputTooLarge("300 images", Reason.TOO_MANY_IMAGES)
    reply = answers.reply(wire.Read(refusal=too_many), too_many, "digits", "1.0")
    assert (reply.status, reply.phrase, json.loads(reply.body)) == (
        413, "Payload Too Large", {"code": 413, "type": "InputTooLarge", "message": "300 images"})


def test_a_bug_gives_nothing_away():
    bug = RuntimeError("secret")
    for read in (wire.Read(refusal=bug), wire.Read(refusal=bug, v2=True, request_id="g-1")):
        for in_band in (False, True):
            reply = answers.reply(read, bug, "digits", "1.0", in_band=in_band)
            assert reply.status == 500 and reply.phrase == "Internal Server Error" and "secret" not in reply.body
            assert refusals.INTERNAL_MESSAGE in reply.body
    reply = answers.reply(wire.Read(refusal=bug), bug, "digits", "1.0")
    assert json.loads(reply.body) == {"code": 500, "type": "InternalError",
                                      "message": "internal error while reading the input"}


def test_a_v2_refusal_is_in_the_protocols_shape():
    error = InputError("not an image", Reason.NOT_AN_IMAGE)
    reply = answers.reply(wire.Read(refusal=error, v2=True, request_id="g-7"), error, "digits", "1.0")
    assert (reply.status, reply.phrase, json.loads(reply.body)) == (400, "Bad Request", {"error": "not an image"})


def test_a_v2_refusal_over_grpc_travels_in_band():
    error = InputError("not an image", Reason.NOT_AN_IMAGE)
    reply = answers.reply(wire.Read(refusal=error, v2=True, request_id="g-7"), error, "digits", "1.0", in_band=True)
    body = json.loads(reply.body)
    assert reply.status == 400 and body["id"] == "g-7" and body["model_name"] == "digits"
    assert body["model_version"] == "1.0" and body["outputs"][0]["data"] == [{"code": 400, "error": "not an image"}]
    assert body == open_inference.format_grpc_error("g-7", "digits", "1.0", 400, "not an image")
    torchserve = answers.reply(wire.Read(refusal=error), error, "digits", "1.0", in_band=True)
    assert set(json.loads(torchserve.body)) == {"code", "type", "message"}  # gRPC's own API: TorchServe's shape


def test_a_refusal_read_from_a_request_is_answered_as_it_came():
    """From wire.read to reply: a bad v2 request keeps the protocol's shape and its id, a bad own one TorchServe's."""
    limits = Limits(10, 3, 256)
    bad_v2 = wire.read({"body": {"id": "q-1", "inputs": [{"name": "x", "datatype": "BOOL", "shape": [1],
                                                          "data": [True]}]}}, limits)
    in_band = json.loads(answers.reply(bad_v2, bad_v2.refusal, "digits", "1.0", in_band=True).body)
    assert in_band["id"] == "q-1" and "datatype 'BOOL' is not accepted" in in_band["outputs"][0]["data"][0]["error"]
    bad_own = wire.read({"body": bytearray(b"junk")}, limits)
    assert json.loads(answers.reply(bad_own, bad_own.refusal, "digits", "1.0").body)["type"] == "InputError"
