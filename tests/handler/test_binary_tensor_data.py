"""Triton's binary tensor data extension of the Open Inference Protocol (what tritonclient sends by default) through
the handler, under TorchServe's own Context: the JSON header, then the tensors' bytes; outputs in binary when asked.

The request bodies here are written from the extension's text (docs of Triton's protocol extensions), not with the
handler's own encoder: 4-byte little-endian lengths before each BYTES element, little-endian numbers.
"""
import json
import struct

import numpy as np
import pytest

from handler import open_inference
from tests.support.handler_context import REST_REQUEST, V2_REQUEST, make_context
from tests.support.images import png_bytes

HEADER = "Inference-Header-Content-Length"


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


def test_the_encoder_writes_what_the_extension_specifies():
    request = open_inference.InferRequest("i", "x", None, binary_output=True)
    answer = {"id": "i", "model_name": "digits", "model_version": "1.0",
              "outputs": [open_inference.output_tensor("probabilities", "FP32", [1, 2], [0.25, 0.75]),
                          open_inference.output_tensor("labels", "BYTES", [1], ["7"])]}
    body, length = open_inference.encode_infer_response(request, answer)
    header = json.loads(body[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 5}
    assert body[length:] == struct.pack("<ff", 0.25, 0.75) + b"\x01\x00\x00\x007"
    assert answer["outputs"][0]["data"] == [0.25, 0.75]  # the answer itself is left as it was
