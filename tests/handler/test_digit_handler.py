"""TorchServe's adapter under TorchServe's own Context, as a worker runs it, without a server: every format in, each
request's status, headers and body out, metrics sent; the recorded corpus replayed byte for byte; every fault refused
alike in every format that can carry it."""
import base64
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import train
from benchmarks.coldstart import STARTED
from handler import digit_handler, explanations, predictor, wire
from handler.digit_handler import DigitHandler
from model import preprocessing
from tests.support import ROOT, bad_inputs, corpus
from tests.support.handler_context import (GRPC_REQUEST, REST_REQUEST, V2_REQUEST, emitted, make_context,
                                          run_batch)
from tests.support.images import npy_bytes, png_bytes
from tests.support.tolerances import DEFAULT_STEPS_MAX_ERROR

EXPLAIN_REQUEST = {**REST_REQUEST, "explain": "True"}  # what TorchServe sends for /explanations
V2_EXPLAIN_REQUEST = {**V2_REQUEST, "explain": "True"}  # ... and for /v2/models/<model>/explain
HEADER = "Inference-Header-Content-Length"


def run(handler, model_dir, rows, requests=None):
    """One batch -> each request's answer (parsed JSON) and status."""
    context = make_context(model_dir, len(rows), requests=requests)
    results = handler.handle(rows, context)
    statuses = [context.get_response_status(idx)[0] for idx in range(len(rows))]
    return [json.loads(result) for result in results], statuses


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---------------------------------------------------------------- the adapter: what TorchServe says of a request


def test_the_handler_module_defines_one_class():
    """TorchServe loads a handler module only if it defines exactly one class (model_service_worker)."""
    import inspect

    classes = [obj for _, obj in inspect.getmembers(digit_handler, inspect.isclass)
               if obj.__module__ == digit_handler.__name__]
    assert classes == [DigitHandler]


def test_what_the_frontend_says_of_each_request():
    """REST /predictions carries headers with url_path, a REST v2 path headers without it, gRPC only input fields;
    /explanations and /v2/.../explain say explain: True, a gRPC request the input field explain=true."""
    assert digit_handler.came_over_grpc(GRPC_REQUEST) and digit_handler.came_over_grpc({})
    assert not digit_handler.came_over_grpc(REST_REQUEST) and not digit_handler.came_over_grpc(V2_REQUEST)
    assert digit_handler.came_over_open_inference(V2_REQUEST)
    assert not digit_handler.came_over_open_inference(REST_REQUEST)
    assert not digit_handler.came_over_open_inference(GRPC_REQUEST)
    assert digit_handler.wants_explanation(EXPLAIN_REQUEST, {}) and digit_handler.wants_explanation(V2_EXPLAIN_REQUEST, {})
    assert digit_handler.wants_explanation(GRPC_REQUEST, {"explain": b"true"})
    assert not digit_handler.wants_explanation(REST_REQUEST, {"explain": b"no"})
    assert digit_handler.header_value({"X-REQUEST-ID": "a", "body": {}}, "x-request-id") == "a"
    assert digit_handler.header_value({"x-request-id": {"not": "a header"}}, "X-Request-Id") is None


def test_the_settings_reach_the_predictor_and_a_misspelled_one_fails(model_dir):
    handler = DigitHandler()
    handler.initialize(make_context(model_dir, 1, {"handler": {"topk": 5, "max_images": 7, "metrics_seconds": 0}}))
    assert handler.predictor.limits == predictor.Limits(num_classes=10, topk=5, max_images=7)
    with pytest.raises(ValueError, match="unknown handler settings"):
        DigitHandler().initialize(make_context(model_dir, 1, {"handler": {"top_k": 5}}))


def test_initialize_reads_weights_labels_and_settings(handler):
    assert handler.initialized and handler.predictor.device == torch.device("cpu")
    assert handler.predictor.labels == preprocessing.DEFAULT_LABELS
    assert handler.predictor.resolution == preprocessing.DIGIT_BOX  # trained on MNIST: served at full resolution
    assert isinstance(handler.predictor.model, torch.jit.ScriptModule)  # optimize_for_cpu: frozen, eval-only
    assert handler.model_name == "digits" and handler.predictor.limits.topk == 3


NO_CUDA = "no CUDA GPU on this machine: GPU placement is not tested here (scripts/gpu_check.sh on a GPU machine)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_a_worker_given_a_gpu_runs_on_it(model_dir):
    handler = DigitHandler()
    context = make_context(model_dir, 1)
    context.system_properties["gpu_id"] = 0
    handler.initialize(context)
    assert handler.predictor.device == torch.device("cuda:0")
    assert next(handler.predictor.model.parameters()).device == torch.device("cuda:0")


def test_batch_of_every_input_kind_predicts_the_true_digits(handler, model_dir, test_split):
    images, labels = test_split
    scans = [png_bytes(image) for image in images[:4]]
    rows = [
        {"body": bytearray(scans[0])},  # raw bytes
        {"body": {"data": base64.b64encode(scans[1]).decode()}},  # JSON parsed by TorchServe
        {"data": bytearray(scans[2])},  # multipart field "data"
        {"body": json.dumps({"data": "data:image/png;base64," + base64.b64encode(scans[3]).decode(), "topk": 5}).encode()},
    ]
    answers, statuses, context = run_batch(handler, model_dir, rows)
    assert statuses == [200] * 4
    assert [answer["label"] for answer in answers] == [str(label) for label in labels[:4]]
    assert [len(answer["topk"]) for answer in answers] == [3, 3, 3, 5]
    for answer in answers:
        probabilities = [entry["probability"] for entry in answer["topk"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert answer["probability"] == probabilities[0] and 0 < answer["probability"] <= 1
    assert context.get_response_headers(0)["X-Batch-Size"] == "4"
    batch_ids = {context.get_response_headers(idx)["X-Batch-Id"] for idx in range(4)}
    assert len(batch_ids) == 1 and batch_ids.pop().startswith(f"{os.getpid()}-")
    assert context.get_response_content_type(0) == "application/json"


def test_each_answer_echoes_its_requests_x_request_id(handler, model_dir, test_split):
    """A REST client's X-Request-Id (any spelling) comes back in X-Client-Request-Id, on each answer its own, refused
    ones too; a request without one, or over gRPC (no headers), gets none."""
    images, _ = test_split
    png = bytearray(png_bytes(images[0]))
    properties = [{**REST_REQUEST, "X-Request-Id": "first"}, {**REST_REQUEST, "x-request-id": "second"},
                  {**REST_REQUEST, "X-REQUEST-ID": "refused"}, REST_REQUEST, GRPC_REQUEST]
    rows = [{"body": png}, {"body": png}, {"body": bytearray(b"not an image")}, {"body": png}, {"data": png}]
    context = make_context(model_dir, len(rows), requests=properties)
    handler.handle(rows, context)
    assert [context.get_response_status(idx)[0] for idx in range(len(rows))] == [200, 200, 400, 200, 200]
    echoed = [context.get_response_headers(idx).get(digit_handler.REQUEST_ID_ECHO_HEADER) for idx in range(len(rows))]
    assert echoed == ["first", "second", "refused", None, None]


def test_pixel_array_request(handler, model_dir, test_split):
    images, labels = test_split
    frame = preprocessing.to_mnist_geometry(images[0] / 255.0)
    pixels = np.rint(frame * 255).astype(int).tolist()
    answers, statuses, _ = run_batch(handler, model_dir, [{"body": {"pixels": pixels}}])
    assert statuses == [200] and answers[0]["label"] == str(labels[0])


def test_many_images_in_one_request_get_one_answer_each_in_order(handler, model_dir, test_split):
    """A .npy of frames and a JSON list of base64 PNGs, batched with a single-image request."""
    images, labels = test_split
    frames = np.stack([np.rint(preprocessing.to_mnist_geometry(image / 255.0) * 255) for image in images[:30]])
    rows = [
        {"body": bytearray(npy_bytes(frames.astype(np.uint8)))},
        {"body": {"images": [base64.b64encode(png_bytes(image)).decode() for image in images[30:40]], "topk": 2}},
        {"body": bytearray(png_bytes(images[40]))},
    ]
    answers, statuses, context = run_batch(handler, model_dir, rows)
    assert statuses == [200, 200, 200]
    npy_labels = [answer["label"] for answer in answers[0]["predictions"]]
    assert len(npy_labels) == 30 and sum(a == str(b) for a, b in zip(npy_labels, labels[:30])) >= 28
    listed = answers[1]["predictions"]
    assert [answer["label"] for answer in listed] == [str(label) for label in labels[30:40]]
    assert all(len(answer["topk"]) == 2 for answer in listed)
    assert answers[2]["label"] == str(labels[40]) and "predictions" not in answers[2]
    # the same images one by one give the same answers
    single, _, _ = run_batch(handler, model_dir, [{"body": bytearray(png_bytes(image))} for image in images[30:40]])
    assert [answer["label"] for answer in single] == [answer["label"] for answer in listed]


def test_too_many_images_is_413_and_a_bad_image_names_its_index(handler, model_dir, test_split):
    image = test_split[0][0]
    frames = np.zeros((handler.predictor.limits.max_images + 1, 28, 28), np.uint8)
    listed = [base64.b64encode(png_bytes(image)).decode()] * 3 + ["###"]
    answers, statuses, _ = run_batch(handler, model_dir, [
        {"body": bytearray(npy_bytes(frames))},
        {"body": {"images": listed}},
        {"body": bytearray(png_bytes(image))},
    ])
    assert statuses == [413, 400, 200]
    assert answers[0] == {"code": 413, "type": "InputTooLarge",
                          "message": f"{handler.predictor.limits.max_images + 1} images in one request; the limit is {handler.predictor.limits.max_images}"}
    assert answers[1]["message"] == "image 3: not valid base64"


BAD_ROWS = {
    "empty body": ({"body": bytearray()}, "empty"),
    "no fields (curl -d)": ({}, "empty request"),
    "not an image": ({"body": bytearray(b"\x00\x01garbage" * 10)}, "not an image"),
    "text body": ({"body": "hello"}, "neither an image nor JSON"),
    "invalid json": ({"body": bytearray(b'{"data": ')}, "invalid JSON"),
    "json list": ({"body": [1, 2, 3]}, "must be an object"),
    "json without data": ({"body": {"image": "x"}}, 'needs "data"'),
    "bad base64": ({"body": {"data": "###not base64###"}}, "not valid base64"),
    "base64 of text": ({"body": {"data": base64.b64encode(b"just text").decode()}}, "not an image"),
    "data not a string": ({"body": {"data": 7}}, "base64 string"),
    "wrong shape": ({"body": {"pixels": [[0] * 28] * 3}}, "28x28"),
    "out of range": ({"body": {"pixels": [[999] * 28] * 28}}, "0..255"),
    "bad topk": ({"body": {"pixels": [[0] * 28] * 28, "topk": 11}}, "topk"),
    "too small": ({"body": bytearray(png_bytes(np.full((2, 2), 255, np.uint8)))}, "too small"),
    "images not a list": ({"body": {"images": "abc"}}, "must be a list"),
    "images empty": ({"body": {"images": []}}, "no images"),
    "npy wrong shape": ({"body": bytearray(npy_bytes(np.zeros((2, 28, 27), np.uint8)))}, "N x 28 x 28"),
    "npy blank frame": ({"body": bytearray(npy_bytes(np.zeros((2, 28, 28), np.uint8)))}, "image 0: blank image"),
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_bad_request_gets_400_alone_and_the_rest_of_the_batch_is_answered(handler, model_dir, test_split, name):
    row, message = BAD_ROWS[name]
    images, labels = test_split
    good = {"body": bytearray(png_bytes(images[5]))}
    answers, statuses, _ = run_batch(handler, model_dir, [good, row, good])
    assert statuses == [200, 400, 200]
    assert answers[1]["code"] == 400 and answers[1]["type"] == "InputError"
    assert message in answers[1]["message"]
    assert answers[0]["label"] == answers[2]["label"] == str(labels[5])


def test_unexpected_error_costs_only_that_request(handler, model_dir, test_split, monkeypatch):
    images, labels = test_split
    real_read = wire.read_body

    def flaky(payload):
        if payload == b"boom":
            raise RuntimeError("a bug")
        return real_read(payload)

    monkeypatch.setattr(wire, "read_body", flaky)
    answers, statuses, _ = run_batch(handler, model_dir, [{"body": b"boom"}, {"body": bytearray(png_bytes(images[1]))}])
    assert statuses == [500, 200]
    assert answers[0]["type"] == "InternalError" and answers[1]["label"] == str(labels[1])


@pytest.mark.usefixtures("broken_geometry")
def test_a_bug_in_the_batched_geometry_costs_only_its_request(handler, model_dir, test_split):
    """An unexpected error in the batch's geometry: the batch is preprocessed again one request at a time, and only
    the request whose image triggers it gets a 500."""
    images, labels = test_split
    odd = np.pad(images[2], ((0, 1), (0, 1)))
    answers, statuses, _ = run_batch(handler, model_dir, [{"body": bytearray(png_bytes(image))} for image in
                                                          (images[0], odd, images[1])])
    assert statuses == [200, 500, 200]
    assert answers[1]["type"] == "InternalError"
    assert [answers[0]["label"], answers[2]["label"]] == [str(labels[0]), str(labels[1])]


def test_grpc_answers_are_marked_final_and_rest_answers_are_not(handler, model_dir, test_split):
    """gRPC's StreamPredictions needs ts_stream_next on every answer (or the worker is restarted); REST must not see it."""
    image = test_split[0][0]
    rows = [{"body": bytearray(png_bytes(image))}, {"data": bytearray(png_bytes(image))}, {"data": bytearray(b"junk")}]
    context = make_context(model_dir, 3, requests=[REST_REQUEST, GRPC_REQUEST, GRPC_REQUEST])
    results = [json.loads(result) for result in handler.handle(rows, context)]
    assert results[0] == results[1] and results[2]["code"] == 400
    headers = [context.get_response_headers(idx) for idx in range(3)]
    assert digit_handler.STREAM_NEXT_HEADER not in headers[0]
    assert headers[1][digit_handler.STREAM_NEXT_HEADER] == "false" == headers[2][digit_handler.STREAM_NEXT_HEADER]


def test_per_batch_log_line_is_dropped_and_others_kept(handler):
    import logging

    def record(message):
        return logging.LogRecord("root", logging.INFO, __file__, 1, message, (), None)

    root = logging.getLogger()
    assert root.filter(record("Backend received inference at: %d")) is False
    assert root.filter(record("Torch worker started.")) is True


def test_optimize_can_be_turned_off(model_dir):
    handler = DigitHandler()
    handler.initialize(make_context(model_dir, 1, {"handler": {"optimize": False, "metrics_seconds": 0}}))
    model = handler.predictor.model
    assert isinstance(model, torch.nn.Module) and not isinstance(model, torch.jit.ScriptModule)


def test_a_worker_with_tampered_weights_logs_why_and_exits(model_dir, tmp_path, caplog):
    """The predictor refuses the weights (tests/handler/test_predictor.py); the worker says so in TorchServe's log
    (the line it retries on) and fails its start."""
    tampered = shutil.copytree(model_dir, tmp_path / "model_dir")
    (tampered / predictor.DIGEST_FILE).write_text(f"{'0' * 64}  {train.WEIGHTS_FILE}\n")
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="does not match"):
        DigitHandler().initialize(make_context(tampered, 1))
    assert [record.levelno for record in caplog.records if "refusing to load digit_cnn.pt" in record.getMessage()] \
        == [logging.ERROR]


# ---------------------------------------------------------------- the Open Inference Protocol through the handler


def images_request(images, request_id="r-1") -> dict:
    return {"id": request_id, "inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(images)],
                                          "data": [b64(png_bytes(image)) for image in images]}]}


def pixels_request(images, datatype="UINT8") -> dict:
    return {"inputs": [{"name": "pixels", "datatype": datatype, "shape": [len(images), 28, 28],
                        "data": np.asarray(images).reshape(-1).tolist()}]}


def output(answer: dict, name: str) -> dict:
    return next(tensor for tensor in answer["outputs"] if tensor["name"] == name)


def test_v2_images_and_pixels_are_answered_with_probabilities_and_labels(handler, model_dir, test_split):
    images, labels = test_split
    rows = [{"body": images_request(images[:3])}, {"body": pixels_request(images[3:7])},
            {"body": pixels_request(images[7:8] / np.float32(1.0), "FP32")}]
    answers, statuses = run(handler, model_dir, rows)
    assert statuses == [200, 200, 200]
    assert answers[0]["id"] == "r-1" and answers[0]["model_name"] == "digits"
    assert answers[1]["id"] == ""
    got = []
    for answer, count in zip(answers, (3, 4, 1)):
        probabilities = output(answer, "probabilities")
        assert probabilities["datatype"] == "FP32" and probabilities["shape"] == [count, 10]
        rows_ = np.asarray(probabilities["data"]).reshape(count, 10)
        assert np.allclose(rows_.sum(axis=1), 1.0, atol=1e-4)
        best = output(answer, "labels")
        assert best["datatype"] == "BYTES" and best["shape"] == [count]
        assert best["data"] == [str(index) for index in rows_.argmax(axis=1)]
        got += best["data"]
    assert sum(label == str(truth) for label, truth in zip(got, labels[:8])) >= 7


def test_v2_answers_equal_the_handlers_own_answers(handler, model_dir, test_split):
    """The same digit over v2 and over TorchServe's own API: the same probabilities."""
    image = test_split[0][5]
    own, _ = run(handler, model_dir, [{"body": {"data": b64(png_bytes(image)), "topk": 10}}])
    v2, _ = run(handler, model_dir, [{"body": images_request([image])}])
    probabilities = output(v2[0], "probabilities")["data"]
    for ranked in own[0]["topk"]:
        assert probabilities[ranked["index"]] == pytest.approx(ranked["probability"], abs=1e-6)


def test_nested_data_and_the_outputs_asked_for(handler, model_dir, test_split):
    image = test_split[0][0]
    request = {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 28, 28], "data": [image.tolist()]}],
               "outputs": [{"name": "labels"}]}
    answers, statuses = run(handler, model_dir, [{"body": json.dumps(request).encode()}])
    assert statuses == [200]
    assert [tensor["name"] for tensor in answers[0]["outputs"]] == ["labels"]
    assert answers[0]["outputs"][0]["data"] == [str(test_split[1][0])]


@pytest.mark.parametrize("request_, words", [
    ({"inputs": []}, "exactly one tensor"),
    ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1]}]}, "lacks 'data'"),
    ({"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1], "data": [True]}]}, "datatype 'BOOL' is not accepted"),
    ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2], "data": ["aGk="]}]}, "holds 1 elements"),
    ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}, "image 0: not valid base64"),
    ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [b64(b"junk")]}]}, "image 0: not an image"),
    ({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 27, 28], "data": [0] * 756}]}, "pixel frames must be N x 28 x 28, got shape [1, 27, 28]"),
    ({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 700}]}, "holds 700 values"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [28, 28], "data": [300.0] * 784}]}, "0..255"),
    ({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [28, 28], "data": [0] * 784}]}, "image 0: blank image"),
    ({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [28, 28], "data": ["a"] * 784}]}, "numbers 0-255"),
    ({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [-1, 28, 28], "data": []}]}, "non-negative"),
    ({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [28, 28], "data": [9] * 784}],
      "outputs": [{"name": "logits"}]}, "unknown output 'logits'"),
])
def test_a_bad_v2_request_gets_400_in_the_protocols_error_shape_alone(handler, model_dir, test_split, request_, words):
    image = test_split[0][0]
    answers, statuses = run(handler, model_dir, [{"body": request_}, {"body": images_request([image])}])
    assert statuses == [400, 200]
    assert set(answers[0]) == {"error"} and words in answers[0]["error"], answers[0]
    assert output(answers[1], "labels")["data"] == [str(test_split[1][0])]


def test_too_many_v2_images_is_413(handler, model_dir):
    request = {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [257, 28, 28], "data": [0] * (257 * 784)}]}
    answers, statuses = run(handler, model_dir, [{"body": request}])
    assert statuses == [413] and "257 images in one request; the limit is 256" in answers[0]["error"]


def test_a_bad_v2_request_over_grpc_is_answered_in_band(handler, model_dir, test_split):
    """TorchServe's v2 gRPC answer is built from the handler's JSON with status OK: the refusal is an "error" output,
    and id, model_name and model_version are there (the frontend reads them from every answer)."""
    request = {"id": "g-7", "inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [b64(b"junk")]}]}
    answers, statuses = run(handler, model_dir, [{"body": request}, {"body": images_request([test_split[0][0]])}],
                            requests=[GRPC_REQUEST, GRPC_REQUEST])
    assert statuses[1] == 200
    refused = answers[0]
    assert refused["id"] == "g-7" and refused["model_name"] == "digits" and "model_version" in refused
    assert [tensor["name"] for tensor in refused["outputs"]] == ["error"]
    error = refused["outputs"][0]["data"][0]
    assert error["code"] == 400 and "not an image" in error["error"]


# The matrix's cases that are images (the others are JSON-level cases of TorchServe's own API, or an empty body).
IMAGE_CASES = [name for name in sorted(bad_inputs.REFUSED) if not name.startswith(("json", "bad base64", "pixels", "empty"))]


@pytest.mark.parametrize("name", IMAGE_CASES)
def test_the_bad_input_matrix_as_v2_images_is_refused_with_its_message(handler, model_dir, test_split, name):
    """Every image of the matrix, sent as a v2 BYTES element: refused with the same words."""
    body = bad_inputs.refused_bodies(test_split[0][0])[name]
    request = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [b64(body)]}]}
    answers, statuses = run(handler, model_dir, [{"body": request}])
    assert statuses[0] in (400, 413) and bad_inputs.REFUSED[name] in answers[0]["error"]


# ---------------------------------------------------------------- the binary tensor data extension through the handler


def binary_body(header: dict, data: bytes) -> tuple[bytes, dict]:
    """A request body in the extension and the request headers TorchServe hands the worker for it."""
    text = json.dumps(header).encode()
    return text + data, {**V2_REQUEST, HEADER: str(len(text)), "body": {"content-type": None}}


def bytes_elements(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def images_body(images, outputs=None, parameters=None) -> tuple[bytes, dict]:
    data = bytes_elements([png_bytes(image) for image in images])
    header = {"id": "b-1", "inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(images)],
                                       "parameters": {"binary_data_size": len(data)}}]}
    if outputs is not None:
        header["outputs"] = outputs
    if parameters is not None:
        header["parameters"] = parameters
    return binary_body(header, data)


def pixels_body(images, datatype="UINT8", parameters=None) -> tuple[bytes, dict]:
    dtype = {"UINT8": "<u1", "FP32": "<f4", "INT64": "<i8"}[datatype]
    data = np.asarray(images, dtype=dtype).tobytes()
    header = {"inputs": [{"name": "pixels", "datatype": datatype, "shape": [len(images), 28, 28],
                          "parameters": {"binary_data_size": len(data)}}]}
    if parameters is not None:
        header["parameters"] = parameters
    return binary_body(header, data)


def handle(handler, model_dir, requests: list[tuple[object, dict]]):
    """One batch -> [(status, response headers, body bytes or text)] per request."""
    context = make_context(model_dir, len(requests), requests=[headers for _, headers in requests])
    results = handler.handle([{"body": body} for body, _ in requests], context)
    return [(context.get_response_status(idx)[0], context.get_response_headers(idx), result)
            for idx, result in enumerate(results)]


def read_answer(headers: dict, body) -> tuple[dict, dict]:
    """An answer in the extension -> its JSON header and each output's data, decoded from binary where it came so."""
    if HEADER not in headers:
        answer = json.loads(body)
        return answer, {tensor["name"]: tensor["data"] for tensor in answer["outputs"]}
    length = int(headers[HEADER])
    answer, rest = json.loads(body[:length]), body[length:]
    data = {}
    for tensor in answer["outputs"]:
        if "data" in tensor:
            data[tensor["name"]] = tensor["data"]
            continue
        size = tensor["parameters"]["binary_data_size"]
        raw, rest = rest[:size], rest[size:]
        if tensor["datatype"] == "BYTES":
            items = []
            while raw:
                (length,) = struct.unpack_from("<I", raw)
                items.append(raw[4:4 + length].decode())
                raw = raw[4 + length:]
            data[tensor["name"]] = items
        else:
            data[tensor["name"]] = np.frombuffer(raw, dtype="<f4").tolist()
    assert rest == b"", "bytes left over after the outputs' binary_data_size"
    return answer, data


def json_answer(handler, model_dir, images) -> dict:
    """The same images as a plain JSON v2 request: the answer to compare with."""
    import base64
    request = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(images)],
                           "data": [base64.b64encode(png_bytes(image)).decode() for image in images]}]}
    [(status, _, body)] = handle(handler, model_dir, [(request, V2_REQUEST)])
    assert status == 200
    return {tensor["name"]: tensor["data"] for tensor in json.loads(body)["outputs"]}


def test_binary_inputs_and_outputs_equal_the_json_answers(handler, model_dir, test_split):
    images, labels = test_split
    expected = json_answer(handler, model_dir, images[:6])
    all_binary = {"binary_data_output": True}
    answers = handle(handler, model_dir, [images_body(images[:3], parameters=all_binary),
                                          pixels_body(images[3:5], parameters=all_binary),
                                          pixels_body(images[5:6] / np.float32(1.0), "FP32", all_binary)])
    probabilities, best = [], []
    for status, headers, body in answers:
        assert status == 200 and headers["content-type"] == "application/octet-stream"
        answer, data = read_answer(headers, body)
        assert [tensor["parameters"] for tensor in answer["outputs"]] == [
            {"binary_data_size": len(data["probabilities"]) * 4},
            {"binary_data_size": sum(4 + len(label) for label in data["labels"])}]
        assert all("data" not in tensor for tensor in answer["outputs"])
        probabilities += np.asarray(data["probabilities"]).reshape(-1, 10).tolist()
        best += data["labels"]
    assert best == expected["labels"] == [str(label) for label in labels[:6]]
    # The binary FP32 values are the JSON answer's (rounded to 6 digits) as float32.
    assert np.array_equal(np.asarray(probabilities, dtype=np.float32),
                          np.asarray(expected["probabilities"], dtype=np.float32).reshape(-1, 10))
    assert answers[0][1] and json.loads(answers[0][2][:int(answers[0][1][HEADER])])["id"] == "b-1"


def test_outputs_are_binary_only_where_asked(handler, model_dir, test_split):
    images, labels = test_split
    one = images[:1]
    answers = handle(handler, model_dir, [
        images_body(one),  # binary input, no output asked in binary: plain JSON
        images_body(one, outputs=[{"name": "labels", "parameters": {"binary_data": True}}, {"name": "probabilities"}]),
        images_body(one, parameters={"binary_data_output": True},
                    outputs=[{"name": "probabilities", "parameters": {"binary_data": False}}]),
    ])
    assert [status for status, _, _ in answers] == [200, 200, 200]
    plain_headers, plain = answers[0][1], answers[0][2]
    assert HEADER not in plain_headers and plain_headers["content-type"] == "application/json"
    assert json.loads(plain)["outputs"][1]["data"] == [str(labels[0])]
    answer, data = read_answer(answers[1][1], answers[1][2])
    assert [tensor["name"] for tensor in answer["outputs"]] == ["labels", "probabilities"]
    assert "data" not in answer["outputs"][0] and "data" in answer["outputs"][1]
    assert data["labels"] == [str(labels[0])]
    answer, data = read_answer(answers[2][1], answers[2][2])
    assert [tensor["name"] for tensor in answer["outputs"]] == ["probabilities"] and "data" in answer["outputs"][0]
    assert HEADER not in answers[2][1]  # the one output asked for came as JSON: nothing binary follows


def test_binary_int64_pixels_are_read_little_endian(handler, model_dir, test_split):
    images, labels = test_split
    [(status, headers, body)] = handle(handler, model_dir, [pixels_body(images[:2], "INT64")])
    assert status == 200 and json.loads(body)["outputs"][1]["data"] == [str(label) for label in labels[:2]]


def header_only(header: dict, data: bytes, length: str | None = None) -> tuple[bytes, dict]:
    body, headers = binary_body(header, data)
    if length is not None:
        headers[HEADER] = length
    return body, headers


BYTES_HEADER = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 8}}]}


PIXELS_HEADER = {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 28, 28],
                             "parameters": {"binary_data_size": 784}}]}


@pytest.mark.parametrize("request_, words", [
    (header_only(BYTES_HEADER, b"\x04\x00\x00\x00abcd", length="12x"), "must be a byte count"),
    (header_only(BYTES_HEADER, b"\x04\x00\x00\x00abcd", length="99999"), "the body holds"),
    (header_only(BYTES_HEADER, b"\x04\x00\x00\x00abcd", length="5"), "invalid JSON in the body's first 5 bytes"),
    (header_only(BYTES_HEADER, b"\x04\x00\x00\x00abc"), "binary_data_size is 8, but 7 bytes follow"),
    (header_only(BYTES_HEADER, b"\x09\x00\x00\x00abcd"), "element 0 claims 9 bytes, 4 remain"),
    (header_only({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1],
                              "parameters": {"binary_data_size": 2}}]}, b"\x01\x00"), "inside element 0's"),
    (header_only(BYTES_HEADER, b"\x04\x00\x00\x00abcd"), "image 0: not an image"),
    (header_only({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2],
                              "parameters": {"binary_data_size": 8}}]}, b"\x04\x00\x00\x00abcd"),
     "holds 1 elements, its shape [2] needs 2"),
    (header_only({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["aGk="],
                              "parameters": {"binary_data_size": 4}}]}, b"abcd"), 'both "data" and binary data'),
    (header_only({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]}, b"abcd"),
     "4 bytes follow the JSON header, but the input has no parameters.binary_data_size"),
    (header_only({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 28, 28],
                              "parameters": {"binary_data_size": 700}}]}, bytes(700)), "700 bytes, its shape"),
    (header_only({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 28, 28],
                              "parameters": {"binary_data_size": -1}}]}, b""), "non-negative integer"),
    (header_only({**PIXELS_HEADER, "parameters": {"binary_data_output": "yes"}}, bytes(784)), "true or false"),
    (header_only({**PIXELS_HEADER, "outputs": [{"name": "labels", "parameters": []}]}, bytes(784)),
     'must be an object'),
    (header_only({"data": "aGk="}, b""), 'a JSON object with "inputs"'),
    ((b"{not json", V2_REQUEST), "invalid JSON"),  # a v2 path, no binary: still the protocol's error shape
    ((png_bytes(np.full((28, 28), 200, np.uint8)), V2_REQUEST), 'a JSON object with "inputs"'),
])
def test_a_bad_binary_or_unreadable_v2_request_gets_400_in_the_protocols_shape_alone(handler, model_dir, test_split,
                                                                                      request_, words):
    image, label = test_split[0][0], test_split[1][0]
    answers = handle(handler, model_dir, [request_, images_body([image])])
    (status, _, body), (good_status, good_headers, good_body) = answers
    assert status == 400 and good_status == 200
    refusal = json.loads(body)
    assert set(refusal) == {"error"} and words in refusal["error"], refusal
    assert read_answer(good_headers, good_body)[1]["labels"] == [str(label)]


def test_too_many_binary_images_is_413_in_the_protocols_shape(handler, model_dir):
    body, headers = pixels_body(np.zeros((257, 28, 28), np.uint8))
    [(status, _, answer)] = handle(handler, model_dir, [(body, headers)])
    assert status == 413 and "257 images in one request; the limit is 256" in json.loads(answer)["error"]


def test_predictions_keep_torchserves_own_error_shape(handler, model_dir):
    """Only the v2 paths answer {"error"}: /predictions refuses unparseable JSON in TorchServe's shape, as before."""
    [(status, _, answer)] = handle(handler, model_dir, [(b"{not json", REST_REQUEST)])
    assert status == 400 and set(json.loads(answer)) == {"code", "type", "message"}


# ---------------------------------------------------------------- explanations through the handler


def test_an_explanation_adds_what_the_model_saw_and_why(handler, model_dir, test_split):
    images, labels = test_split
    rows = [{"body": bytearray(png_bytes(images[0]))}, {"body": bytearray(png_bytes(images[1]))}]
    answers, statuses = run(handler, model_dir, rows, requests=[EXPLAIN_REQUEST, REST_REQUEST])
    assert statuses == [200, 200]
    explained, plain = answers
    assert explained["label"] == str(labels[0]) and "attributions" not in plain and plain["label"] == str(labels[1])
    assert explained["method"] == explanations.METHOD and explained["steps"] == explanations.DEFAULT_STEPS
    image, attributions = np.asarray(explained["image"]), np.asarray(explained["attributions"])
    assert image.shape == attributions.shape == (28, 28)
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.9
    # The attributions are integrated gradients of this image for the answered label (their accuracy, whatever the
    # weights, is the concern of the tests below), and they add up to nearly p(x) - p(black).
    network_input = preprocessing.image_bytes_to_tensor(png_bytes(images[0]))[None]
    direct = explanations.integrated_gradients(handler.predictor.eager_model, network_input, torch.tensor([explained["index"]]))
    np.testing.assert_allclose(attributions, direct[0].numpy(), atol=2e-6)  # six decimals in the answer
    gap = explained["probability"] - black_probability(handler, explained["index"])
    assert attributions.sum() == pytest.approx(gap, abs=DEFAULT_STEPS_MAX_ERROR)
    # The evidence lies on the ink: most positive attribution falls where the model saw the digit.
    positive = np.clip(attributions, 0, None)
    assert positive[image > 0.2].sum() > 0.8 * positive.sum()


def black_probability(handler, index: int) -> float:
    with torch.inference_mode():
        black = explanations.black_baseline(torch.zeros(1, 1, 28, 28))
        return float(torch.softmax(handler.predictor.eager_model(black), dim=1)[0, index])


def test_explanations_are_refused_like_predictions_and_limited(handler, model_dir, test_split):
    many = {"images": [b64(png_bytes(image)) for image in test_split[0][:17]]}
    rows = [{"body": bytearray(b"junk")}, {"body": many}, {"data": bytearray(png_bytes(test_split[0][2])),
                                                           "explain": b"true"}]
    answers, statuses = run(handler, model_dir, rows, requests=[EXPLAIN_REQUEST, EXPLAIN_REQUEST, GRPC_REQUEST])
    assert statuses[:2] == [400, 413]
    assert "not an image" in answers[0]["message"]
    assert "17 images to explain in one request; the limit is 16" in answers[1]["message"]
    # gRPC has no explain RPC: the input field explain=true asks for one.
    assert answers[2]["label"] == str(test_split[1][2]) and len(answers[2]["attributions"]) == 28


def test_a_v2_explanation_adds_attributions_and_images(handler, model_dir, test_split):
    answers, statuses = run(handler, model_dir, [{"body": images_request(test_split[0][:2])}],
                            requests=[V2_EXPLAIN_REQUEST])
    assert statuses == [200]
    names = [tensor["name"] for tensor in answers[0]["outputs"]]
    assert names == ["probabilities", "labels", "attributions", "images"]
    assert output(answers[0], "attributions")["shape"] == [2, 28, 28]
    assert len(output(answers[0], "images")["data"]) == 2 * 784


# ---------------------------------------------------------------- metrics and the start line


def declared_model_metrics() -> dict[str, list[str]]:
    config = yaml.safe_load((ROOT / "metrics.yaml").read_text())
    return {metric["name"]: metric["dimensions"] for kind in config["model_metrics"].values() for metric in kind}


def test_a_batch_reports_its_requests_refusals_images_and_answers(handler, model_dir, test_split, caplog):
    images, labels = test_split
    frame = np.rint(preprocessing.to_mnist_geometry(images[2] / 255.0) * 255).astype(int).tolist()
    rows = [
        {"body": bytearray(png_bytes(images[0]))},
        {"body": {"data": base64.b64encode(png_bytes(images[1])).decode()}},
        {"body": {"pixels": frame}},
        {"body": bytearray(npy_bytes(images[3:6]))},
        {"body": bytearray(b"not an image at all")},
        {"body": bytearray(b"")},
    ]
    handler = DigitHandler()  # its counts sent only when flushed (the thread waits an hour)
    handler.initialize(make_context(model_dir, 1, {"handler": {"topk": 3, "metrics_seconds": 3600}}))
    caplog.set_level("INFO")
    answers, statuses, _ = run_batch(handler, model_dir, rows)
    assert statuses == [200, 200, 200, 200, 400, 400]
    assert emitted(caplog) == []  # not from the batch: a thread sends them
    handler.pending_metrics.flush()
    metrics = emitted(caplog)
    declared = declared_model_metrics()
    for name, _, dimensions in metrics:  # undeclared metrics are dropped by TorchServe's frontend, silently
        assert name in declared and list(dimensions) == declared[name], (name, dimensions)
    totals = {}
    for name, value, dimensions in metrics:
        key = (name, *(value for key, value in dimensions.items() if key not in ("ModelName", "Level")))
        totals[key] = totals.get(key, 0) + value
        assert dimensions["ModelName"] == "digits" and dimensions["Level"] == "Model"
    assert totals[("digits_requests_total", "image")] == 2
    assert totals[("digits_requests_total", "pixels")] == 1
    assert totals[("digits_requests_total", "multi_image")] == 1
    assert totals[("digits_refusals_total", "InputError", "not_an_image")] == 1
    assert totals[("digits_refusals_total", "InputError", "empty_body")] == 1
    assert totals[("digits_images_total",)] == 6 and totals[("digits_batches_total",)] == 1
    assert totals[("digits_preprocessing_milliseconds_total",)] > 0
    assert totals[("HandlerTime",)] >= totals[("digits_preprocessing_milliseconds_total",)]  # TorchServe's gauge
    assert totals[("digits_handler_milliseconds_total",)] == totals[("HandlerTime",)]  # one batch: the same time
    answered = [answers[0]["label"], answers[1]["label"], answers[2]["label"],
                *[answer["label"] for answer in answers[3]["predictions"]]]
    predicted = {key[1]: value for key, value in totals.items() if key[0] == "digits_predictions_total"}
    assert predicted == {label: answered.count(label) for label in set(answered)}
    # One metric line per label value and batch, never one per request.
    assert len(metrics) == len(set((name, tuple(dimensions.items())) for name, _, dimensions in metrics))


def test_the_counts_of_many_batches_are_sent_together_one_line_per_name_and_labels(model_dir, test_split, caplog):
    """Counters summed over the batches and TorchServe's HandlerTime gauge the last batch's, sent when flushed; the
    worker's thread flushes every metrics_seconds; at 0 each batch sends its own at once."""
    images, _ = test_split
    batches = [[{"body": bytearray(png_bytes(image))} for image in images[start:start + 3]] for start in (0, 3, 6)]

    def handler_sending_every(seconds: float) -> DigitHandler:
        handler = DigitHandler()
        handler.initialize(make_context(model_dir, 1, {"handler": {"topk": 3, "metrics_seconds": seconds}}))
        return handler

    def totals() -> dict[str, float]:
        sums: dict[str, float] = {}
        for name, value, _ in emitted(caplog):
            sums[name] = sums.get(name, 0.0) + value
        return sums

    caplog.set_level("INFO")
    held = handler_sending_every(3600)  # its thread would wait an hour: only flush() sends
    caplog.clear()
    for rows in batches:
        run_batch(held, model_dir, rows)
    assert emitted(caplog) == []
    held.pending_metrics.flush()
    keys = [(name, tuple(sorted(dimensions.items()))) for name, _, dimensions in emitted(caplog)]
    assert len(keys) == len(set(keys)), keys  # one line per name and labels for all three batches
    sent = totals()
    assert sent["digits_batches_total"] == 3 and sent["digits_images_total"] == 9
    assert sent["digits_predictions_total"] == 9 and sent["digits_requests_total"] == 9
    assert 0 < sent["HandlerTime"] < sent["digits_handler_milliseconds_total"]  # the last batch, and all three

    threaded = handler_sending_every(0.2)
    caplog.clear()
    run_batch(threaded, model_dir, batches[0])
    deadline = time.monotonic() + 10
    while totals().get("digits_batches_total") != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert totals().get("digits_batches_total") == 1  # sent by the thread, nobody flushed

    at_once = handler_sending_every(0)
    caplog.clear()
    run_batch(at_once, model_dir, batches[0])
    assert totals()["digits_batches_total"] == 1


def test_initialize_logs_where_its_code_came_from(model_dir, caplog):
    """The start line names the files the worker's code was imported from (here: this checkout's, as pytest imports
    them; in a TorchServe worker the archive's: tests/integration/test_server.py). Its head stays what
    scripts/gpu_check.sh greps."""
    caplog.set_level("INFO")
    DigitHandler().initialize(make_context(model_dir, 1))
    line = next(record.getMessage() for record in caplog.records if "digit model loaded" in record.getMessage())
    assert line.startswith(f"digit model loaded on cpu by pid {os.getpid()} (preprocessing on cpu, ")
    files = line.rpartition(") from ")[2].split(", ")
    assert files == [str(ROOT / name) for name in ("model/digit_cnn.py", "model/checkpoint.py",
                                                   "model/preprocessing.py", "handler/predictor.py",
                                                   "handler/wire.py")]


def test_initialize_logs_how_long_each_part_of_its_start_took(model_dir, caplog):
    """The durations `python -m benchmarks.coldstart` splits a container's start by, read with its own pattern:
    here the process started long before (pytest), the rest took what this machine took."""
    caplog.set_level("INFO")
    began = time.perf_counter()
    DigitHandler().initialize(make_context(model_dir, 1))
    took_ms = (time.perf_counter() - began) * 1000
    line = next(record.getMessage() for record in caplog.records if "digit model loaded" in record.getMessage())
    worker_start, weights, torchscript, warm_up, rest = (int(value) for value in STARTED.search(line).groups())
    assert worker_start > took_ms  # this process (pytest) started before the test did
    assert 0 < weights + torchscript + warm_up + rest <= took_ms + 4  # each rounded to the ms
    assert torchscript > 0  # the shipped model-config optimizes for the CPU


def test_a_worker_reports_its_start_memory_and_cpu(model_dir, caplog):
    caplog.set_level("INFO")
    DigitHandler().initialize(make_context(model_dir, 1))
    metrics = {name: (value, dimensions) for name, value, dimensions in emitted(caplog)}
    assert metrics["digits_worker_starts_total"][0] == 1
    memory, dimensions = metrics["digits_worker_resident_memory_bytes"]
    assert memory > 50e6 and int(dimensions["Worker"]) > 0
    assert metrics["digits_worker_cpu_seconds_total"][0] > 0


# ---------------------------------------------------------------- the corpus recorded before the predictor


CORPUS = ROOT / "tests" / "data" / "handler_corpus.json"
# The refusals that one validator per fault made consistent across formats: (batch, request) of the corpus, the
# message it was refused with when recorded and the one it gets now, its Reason label then and now.
CHANGED = {
    (3, 4): ("pixel array holds NaN or infinite values", "pixels hold NaN or infinite values", "bad_pixels",
             "bad_pixels"),
    (3, 5): ("pixel array must be a 28x28 array of numbers (0-255)", "pixels must be an array of numbers 0-255",
             "bad_pixels", "bad_pixels"),
    (3, 6): ("blank image: no digit found", "pixels must be an array of numbers 0-255", "blank_image", "bad_pixels"),
    (4, 0): ('image 3: "data" is not valid base64', "image 3: not valid base64", "bad_base64", "bad_base64"),
    (4, 1): ('image 1: "data" must be a base64 string, got int', "image 1: not a base64 string: got int", "bad_base64",
             "bad_base64"),
    (4, 4): (".npy array must have shape N x 28 x 28, got [2, 28, 27]",
             "pixel frames must be N x 28 x 28, got shape [2, 28, 27]", "bad_npy", "bad_pixels"),
    (4, 7): (".npy frames hold NaN or infinite values", "pixels hold NaN or infinite values", "bad_npy", "bad_pixels"),
    (8, 9): ("pixel tensor data must be numbers 0-255", "pixels must be an array of numbers 0-255", "bad_request",
             "bad_pixels"),
    (9, 0): ("pixel tensor holds NaN or infinite values", "pixels hold NaN or infinite values", "bad_request",
             "bad_pixels"),
    (9, 2): ("a pixel input has shape [N, 28, 28], got [2, 27, 28]",
             "pixel frames must be N x 28 x 28, got shape [2, 27, 28]", "bad_request", "bad_pixels"),
    (9, 9): ("image 0: BYTES elements must be base64 strings, got int", "image 0: not a base64 string: got int",
             "bad_request", "bad_base64"),
    (9, 10): ("image 0: not valid base64", "image 0: not valid base64", "bad_request", "bad_base64"),
    (10, 5): ('an Open Inference Protocol request is a JSON object with "inputs": one tensor of images (BYTES [N]) or '
              'pixels (UINT8/FP32 [N, 28, 28])', 'empty body: an Open Inference Protocol request is a JSON object with '
              '"inputs": one tensor of images (BYTES [N]) or pixels (UINT8/FP32 [N, 28, 28])', "bad_request",
              "empty_body"),
    (13, 5): ("pixel tensor holds NaN or infinite values", "pixels hold NaN or infinite values", "bad_request",
              "bad_pixels"),
}
# ... and the one refusal that became an answer: a data: URL in a v2 BYTES element (JSON "data" always took one). It
# was refused "image 0: not valid base64" (bad_request); now it is answered as the same image without the prefix.
ANSWERED_NOW = (7, 9)


def metric_totals(rows: list) -> dict:
    return {(name, tuple(sorted(labels.items()))): value for name, value, labels in rows}


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """The stored corpus, and its batches through a new handler over the corpus model."""
    stored = json.loads(CORPUS.read_text())
    assert stored["settings"] == corpus.SETTINGS and stored["seed"] == corpus.SEED
    model_dir = corpus.make_model_dir(tmp_path_factory.mktemp("corpus_model"))
    batches = [batch["requests"] for batch in stored["batches"]]
    return stored, corpus.handle_all(DigitHandler, model_dir, batches), model_dir


def test_the_corpus_holds_every_format_over_rest_v2_and_grpc(replayed):
    stored, _, _ = replayed
    requests = [request for batch in stored["batches"] for request in batch["requests"]]
    properties = [json.dumps(request["properties"], sort_keys=True) for request in requests]
    assert len(requests) >= 170 and len(stored["batches"]) >= 20
    for kind in (corpus.REST, corpus.REST_EXPLAIN, corpus.V2, corpus.V2_EXPLAIN, corpus.GRPC):
        assert json.dumps(kind, sort_keys=True) in properties
    assert any(corpus.BINARY_HEADER in request["properties"] for request in requests)
    statuses = {answer["status"] for batch in stored["batches"] for answer in batch["answers"]}
    assert statuses == {200, 400, 413}


def test_every_answer_and_refusal_is_what_the_handler_gave_before(replayed):
    """Byte for byte: status, phrase, headers, content type, body of every request, and each batch's metric counts;
    except the refusals listed in CHANGED (their new words and reasons) and ANSWERED_NOW."""
    stored, results, model_dir = replayed
    for number, (batch, result) in enumerate(zip(stored["batches"], results)):
        expected_metrics = metric_totals(batch["metrics"])
        for index, (recorded, answer) in enumerate(zip(batch["answers"], result["answers"], strict=True)):
            where = (number, index)
            if where == ANSWERED_NOW:
                continue
            expected = dict(recorded)
            if where in CHANGED:
                old, new, old_reason, new_reason = CHANGED[where]
                body = json.loads(recorded["body"]["text"])
                field = "message" if "message" in body else "error"
                assert body[field] == old, where
                expected["body"] = {"text": json.dumps({**body, field: new})}
                for reason, change in ((old_reason, -1), (new_reason, +1)):
                    key = ("digits_refusals_total", tuple(sorted({"ErrorType": "InputError", "Reason": reason,
                                                                  "ModelName": "digits", "Level": "Model"}.items())))
                    expected_metrics[key] = expected_metrics.get(key, 0) + change
            assert answer == expected, where
        if number == ANSWERED_NOW[0]:
            answer = result["answers"][ANSWERED_NOW[1]]
            assert json.loads(batch["answers"][ANSWERED_NOW[1]]["body"]["text"]) == {"error": "image 0: not valid base64"}
            # the same batch with the element's data: prefix taken off: the same answer, to the byte
            plain = json.loads(json.dumps(batch["requests"]))
            element = plain[ANSWERED_NOW[1]]["row"]["body"]["json"]["inputs"][0]["data"]
            element[0] = element[0].partition(",")[2]
            again = corpus.handle_all(DigitHandler, model_dir, [plain])[0]["answers"][ANSWERED_NOW[1]]
            assert again["headers"].pop("X-Batch-Id") == "PID-1"  # the batch number of a new handler
            assert again == {**answer, "headers": {key: value for key, value in answer["headers"].items()
                                                   if key != "X-Batch-Id"}}
            assert answer["status"] == 200
            label = json.loads(answer["body"]["text"])["outputs"][1]["data"][0]
            for name, labels, change in (("digits_refusals_total", {"ErrorType": "InputError", "Reason": "bad_request"}, -1),
                                         ("digits_requests_total", {"InputKind": "oip"}, 1),
                                         ("digits_images_total", {}, 1), ("digits_predictions_total", {"Label": label}, 1)):
                key = (name, tuple(sorted({**labels, "ModelName": "digits", "Level": "Model"}.items())))
                expected_metrics[key] = expected_metrics.get(key, 0) + change
        expected_metrics = {key: value for key, value in expected_metrics.items() if value != 0}
        assert metric_totals(result["metrics"]) == expected_metrics, number


# ---------------------------------------------------------------- one fault, one reason, one status, every format


def v2_body(tensor: dict) -> dict:
    return {"inputs": [{"name": "x", **tensor}]}


def pixels_v2(values, shape, datatype="UINT8") -> dict:
    return v2_body({"datatype": datatype, "shape": shape, "data": values})


def binary_request(datatype: str, shape: list[int], data: bytes) -> tuple[dict, dict]:
    return corpus.binary({"inputs": [{"name": "x", "datatype": datatype, "shape": shape,
                                      "parameters": {"binary_data_size": len(data)}}]}, data)


def nan_json(document: dict) -> bytearray:
    return bytearray(json.dumps(document, allow_nan=True).encode())


def fault_cases(digit: np.ndarray) -> dict[str, tuple[int, str, str, dict[str, tuple[dict, dict]]]]:
    """fault -> (status, Reason, a pattern of the words every refusal of it says, {format: (request properties, row)}): each fault in
    every format that can carry it."""
    junk, blank = b"\x00\x01 no image format" * 4, np.zeros((28, 28), np.uint8)
    nan_frames, big_frames = np.full((1, 28, 28), np.nan, np.float32), np.full((1, 28, 28), 300, np.int16)
    many = corpus.SETTINGS["handler"]["max_images"] + 1
    rest, v2, grpc = corpus.REST, corpus.V2, corpus.GRPC
    return {
        "NaN pixels": (400, "bad_pixels", "pixels hold NaN or infinite values", {
            "JSON pixels": (rest, {"body": nan_json({"pixels": [[float("nan")] * 28] * 28})}),
            ".npy": (rest, {"body": bytearray(npy_bytes(nan_frames))}),
            "v2 JSON": (v2, {"body": nan_json(pixels_v2([float("nan")] * 784, [1, 28, 28], "FP32"))}),
            "v2 binary": binary_request("FP32", [1, 28, 28], nan_frames.astype("<f4").tobytes()),
            "v2 over gRPC": (grpc, {"body": pixels_v2([float("nan")] * 784, [28, 28], "FP32")}),
        }),
        "pixels out of range": (400, "bad_pixels", r"pixel values must lie in 0\.\.255, got 300\.\.300", {
            "JSON pixels": (rest, {"body": {"pixels": big_frames[0].tolist()}}),
            ".npy": (rest, {"body": bytearray(npy_bytes(big_frames))}),
            "v2 JSON": (v2, {"body": pixels_v2(big_frames.reshape(-1).tolist(), [1, 28, 28], "INT16")}),
            "v2 binary": binary_request("INT64", [1, 28, 28], big_frames.astype("<i8").tobytes()),
            "JSON pixels over gRPC": (grpc, {"data": nan_json({"pixels": big_frames[0].tolist()})}),
        }),
        "pixels of the wrong shape": (400, "bad_pixels", r", got shape \[", {
            ".npy": (rest, {"body": bytearray(npy_bytes(np.zeros((2, 28, 27), np.uint8)))}),
            "v2 JSON": (v2, {"body": pixels_v2([0] * 756, [1, 27, 28])}),
            "v2 binary": binary_request("UINT8", [1, 27, 28], bytes(756)),
            "v2 over gRPC": (grpc, {"body": pixels_v2([0] * 756, [27, 28])}),
            "JSON pixels": (rest, {"body": {"pixels": [[0] * 28] * 27}}),
        }),
        "pixels that are not numbers": (400, "bad_pixels", "pixels must be an array of numbers 0-255", {
            "JSON pixels": (rest, {"body": {"pixels": [["7"] * 28] * 28}}),
            "v2 JSON": (v2, {"body": pixels_v2(["7"] * 784, [28, 28])}),
            "v2 JSON booleans": (v2, {"body": pixels_v2([True] * 784, [28, 28])}),
        }),
        "bad base64": (400, "bad_base64", "not valid base64", {
            "JSON data": (rest, {"body": {"data": "%%%"}}),
            "JSON images": (rest, {"body": {"images": ["%%%"]}}),
            "v2 JSON BYTES": (v2, {"body": v2_body({"datatype": "BYTES", "shape": [1], "data": ["%%%"]})}),
            "v2 over gRPC": (grpc, {"body": v2_body({"datatype": "BYTES", "shape": [1], "data": ["%%%"]})}),
            "JSON data over gRPC": (grpc, {"data": bytearray(b'{"data": "%%%"}')}),
        }),
        "not an image": (400, "not_an_image", "not an image", {
            "raw body": (rest, {"body": bytearray(junk)}),
            "multipart field": (rest, {"data": bytearray(junk)}),
            "JSON data": (rest, {"body": {"data": b64(junk)}}),
            "JSON images": (rest, {"body": {"images": [b64(junk)]}}),
            "v2 JSON BYTES": (v2, {"body": v2_body({"datatype": "BYTES", "shape": [1], "data": [b64(junk)]})}),
            "v2 binary BYTES": binary_request("BYTES", [1], corpus.length_prefixed([junk])),
            "gRPC": (grpc, {"data": bytearray(junk)}),
        }),
        "too many images": (413, "too_many_images", r"^\d+ images (to explain )?in one request; the limit is \d+$", {
            ".npy": (rest, {"body": bytearray(npy_bytes(np.zeros((many, 28, 28), np.uint8)))}),
            "JSON images": (rest, {"body": {"images": [b64(png_bytes(digit))] * many}}),
            "v2 JSON pixels": (v2, {"body": pixels_v2([0] * (784 * many), [many, 28, 28])}),
            "v2 JSON BYTES": (v2, {"body": v2_body({"datatype": "BYTES", "shape": [many], "data": [""] * many})}),
            "v2 binary": binary_request("UINT8", [many, 28, 28], bytes(784 * many)),
            "v2 over gRPC": (grpc, {"body": pixels_v2([0] * (784 * many), [many, 28, 28])}),
            "explained JSON images": (corpus.REST_EXPLAIN, {"body": {"images": [b64(png_bytes(digit))] * 17}}),
        }),
        "nothing to read": (400, "empty_body", "^empty (body|request): |^no images in the request$", {
            "raw body": (rest, {"body": bytearray()}),
            "no field (curl -d)": (rest, {}),
            "JSON images": (rest, {"body": {"images": []}}),
            "v2 path": (v2, {"body": bytearray()}),
            "v2 pixels": (v2, {"body": pixels_v2([], [0, 28, 28])}),
            "v2 BYTES": (v2, {"body": v2_body({"datatype": "BYTES", "shape": [0], "data": []})}),
            "gRPC": (grpc, {"data": bytearray()}),
        }),
        "a blank image": (400, "blank_image", "blank image: no digit found", {
            "raw body": (rest, {"body": bytearray(png_bytes(blank))}),
            "JSON pixels": (rest, {"body": {"pixels": blank.tolist()}}),
            ".npy": (rest, {"body": bytearray(npy_bytes(blank[None]))}),
            "v2 JSON pixels": (v2, {"body": pixels_v2([0] * 784, [28, 28])}),
            "v2 JSON BYTES": (v2, {"body": v2_body({"datatype": "BYTES", "shape": [1], "data": [b64(png_bytes(blank))]})}),
            "v2 binary": binary_request("UINT8", [1, 28, 28], bytes(784)),
            "gRPC": (grpc, {"data": bytearray(png_bytes(blank))}),
        }),
        "JSON that does not parse": (400, "bad_json", "invalid JSON", {
            "raw body": (rest, {"body": bytearray(b'{"data": ')}),
            "v2 path": (v2, {"body": bytearray(b'{"inputs": ')}),
            "v2 binary header": corpus.binary({"inputs": []}, b"", length="5"),
            "gRPC": (grpc, {"data": bytearray(b'{"data": ')}),
        }),
    }


def refusal_of(handler_dir, properties: dict, row: dict) -> tuple[int, str, str]:
    """One request alone through the corpus handler: its status (in band over gRPC), Reason label and message."""
    [result] = corpus.handle_all(DigitHandler, handler_dir, [[{"properties": properties, "row": corpus.encode_row(row)}]])
    [answer] = result["answers"]
    body = json.loads(answer["body"]["text"])
    if "outputs" in body:  # a v2 refusal over gRPC, in band
        body = body["outputs"][0]["data"][0]
    status = body.get("code", answer["status"])
    [reason] = [labels["Reason"] for name, _, labels in result["metrics"] if name == "digits_refusals_total"]
    return status, reason, body.get("message", body.get("error"))


@pytest.fixture(scope="module")
def corpus_model_dir(tmp_path_factory):
    return corpus.make_model_dir(tmp_path_factory.mktemp("faults_model"))


@pytest.mark.parametrize("fault", list(fault_cases(np.zeros((28, 28), np.uint8))))
def test_one_fault_gets_one_reason_and_one_status_in_every_format(corpus_model_dir, test_split, fault):
    status, reason, words, formats = fault_cases(test_split[0][0])[fault]
    got = {name: refusal_of(corpus_model_dir, *request) for name, request in formats.items()}
    assert {name: answer[:2] for name, answer in got.items()} == {name: (status, reason) for name in formats}
    assert all(re.search(words, message) for _, _, message in got.values()), got
