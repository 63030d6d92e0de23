"""Open Inference Protocol (v2) requests and explanations through the handler, under TorchServe's own Context."""
import base64
import json

import numpy as np
import pytest
import torch

from handler import explanations, open_inference
from handler.digit_handler import load_model
from model import preprocessing
from model.preprocessing import InputError, InputTooLarge
from tests.support.images import png_bytes
from tests.support.handler_context import GRPC_REQUEST, REST_REQUEST, V2_REQUEST, make_context
from tests.support import bad_inputs
from tests.support.tolerances import (DEFAULT_STEPS_MAX_ERROR, DEFAULT_STEPS_MEDIAN_ERROR, FINE_MAX_ERROR,
                              FINE_STEPS)

EXPLAIN_REQUEST = {**REST_REQUEST, "explain": "True"}  # what TorchServe sends for /explanations
V2_EXPLAIN_REQUEST = {**V2_REQUEST, "explain": "True"}  # ... and for /v2/models/<model>/explain


def run(handler, model_dir, rows, requests=None):
    context = make_context(model_dir, len(rows), requests=requests)
    results = handler.handle(rows, context)
    statuses = [context.get_response_status(idx)[0] for idx in range(len(rows))]
    return [json.loads(result) for result in results], statuses


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


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
    ({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 27, 28], "data": [0] * 756}]}, "shape [N, 28, 28]"),
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


# ---------------------------------------------------------------- explanations


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
    direct = explanations.integrated_gradients(handler.eager_model, network_input, torch.tensor([explained["index"]]))
    np.testing.assert_allclose(attributions, direct[0].numpy(), atol=2e-6)  # six decimals in the answer
    gap = explained["probability"] - black_probability(handler, explained["index"])
    assert attributions.sum() == pytest.approx(gap, abs=DEFAULT_STEPS_MAX_ERROR)
    # The evidence lies on the ink: most positive attribution falls where the model saw the digit.
    positive = np.clip(attributions, 0, None)
    assert positive[image > 0.2].sum() > 0.8 * positive.sum()


def black_probability(handler, index: int) -> float:
    with torch.inference_mode():
        black = explanations.black_baseline(torch.zeros(1, 1, 28, 28))
        return float(torch.softmax(handler.eager_model(black), dim=1)[0, index])


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


def path_ends(artifacts, images):
    """The eager model, the network inputs of `images`, the labels it gives them and p(x) - p(black) for those."""
    model, _ = load_model(str(artifacts / "digit_cnn.pt"), torch.device("cpu"))
    inputs = torch.cat([preprocessing.image_bytes_to_tensor(png_bytes(image))[None] for image in images])
    with torch.inference_mode():
        probabilities = torch.softmax(model(inputs), dim=1)
        baseline = torch.softmax(model(explanations.black_baseline(inputs)), dim=1)
    targets = probabilities.argmax(dim=1)
    gap = probabilities.gather(1, targets[:, None])[:, 0] - baseline.gather(1, targets[:, None])[:, 0]
    return model, inputs, targets, gap


def completeness_error(model, inputs, targets, gap, steps: int) -> torch.Tensor:
    return (explanations.integrated_gradients(model, inputs, targets, steps=steps).sum(dim=(1, 2)) - gap).abs()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch.func's own import
def test_integrated_gradients_are_the_midpoint_rule_of_the_path_integral(artifacts, test_split):
    """Summed attributions = the mean of d p_label(x' + a (x - x')) / da over the midpoints a, the derivative taken
    here by forward-mode AD (torch.func.jvp), apart from the reverse-mode code under test: exact for any weights."""
    model, inputs, targets, _ = path_ends(artifacts, test_split[0][:8])
    baseline = explanations.black_baseline(inputs)
    direction = inputs - baseline

    def probability(point):
        return torch.softmax(model(point), dim=1).gather(1, targets[:, None])[:, 0]

    steps = explanations.DEFAULT_STEPS
    derivatives = [torch.func.jvp(probability, (baseline + (k + 0.5) / steps * direction,), (direction,))[1]
                   for k in range(steps)]
    riemann = torch.stack(derivatives).mean(dim=0).detach()
    attributions = explanations.integrated_gradients(model, inputs, targets, steps=steps)
    torch.testing.assert_close(attributions.sum(dim=(1, 2)), riemann, atol=1e-5, rtol=1e-4)


def test_integrated_gradients_are_complete_on_real_digits(artifacts, test_split):
    """Summed attributions approach p(x) - p(baseline) for the label (completeness) as the steps grow, and at the
    shipped 32 steps lie within the method's measured error (bounds above); a single step (gradient x input) does
    not: the test can tell the two apart."""
    model, inputs, targets, gap = path_ends(artifacts, test_split[0][:64])
    error = completeness_error(model, inputs, targets, gap, explanations.DEFAULT_STEPS)
    assert float(error.median()) <= DEFAULT_STEPS_MEDIAN_ERROR and float(error.max()) <= DEFAULT_STEPS_MAX_ERROR, \
        (float(error.median()), float(error.max()))
    fine = completeness_error(model, inputs[:8], targets[:8], gap[:8], FINE_STEPS)
    assert float(fine.max()) <= FINE_MAX_ERROR, fine
    crude = completeness_error(model, inputs, targets, gap, 1)
    assert float(crude.median()) > DEFAULT_STEPS_MEDIAN_ERROR and float(crude.max()) > DEFAULT_STEPS_MAX_ERROR, \
        (float(crude.median()), float(crude.max()))


def test_parse_infer_request_reads_shapes_and_limits():
    frames = open_inference.parse_infer_request(
        {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [2, 1, 28, 28], "data": [255] * (2 * 784)}]}, 256)
    assert frames.count == 2 and frames.frames.shape == (2, 28, 28) and frames.frames.max() == 1.0
    with pytest.raises(InputTooLarge):
        open_inference.parse_infer_request(
            {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [3], "data": ["", "", ""]}]}, 2)
    with pytest.raises(InputError, match="unknown output 'attributions'"):
        open_inference.parse_infer_request(
            {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}],
             "outputs": [{"name": "attributions"}]}, 2)
    assert open_inference.flatten([[1, [2, 3]], [4]]) == [1, 2, 3, 4]
