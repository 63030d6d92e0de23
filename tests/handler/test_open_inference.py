"""The Open Inference Protocol on the wire (handler/open_inference.py): v2 requests read into tensors, every refusal
with its reason, the binary tensor data extension (written here from the extension's text: 4-byte little-endian
lengths before each BYTES element, little-endian numbers), the answers and the in-band gRPC refusal."""
import base64
import json
import struct

import numpy as np
import pytest

from handler import open_inference, predictor, refusals, wire
from handler.open_inference import InferRequest, parse_infer_request
from handler.refusals import InputError, InputTooLarge, Reason
from tests.support.images import npy_bytes, png_bytes

STROKE = np.zeros((28, 28), np.uint8)
STROKE[6:22, 12:16] = 255  # a "1"
PNG = png_bytes(STROKE)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v2(tensor: dict, **document) -> dict:
    return {"inputs": [{"name": "x", **tensor}], **document}


PIXELS = {"datatype": "UINT8", "shape": [28, 28]}


def refused(document: dict, max_images: int = 256, explain: bool = False, binary: bytes = b"") -> InputError:
    with pytest.raises(InputError) as raised:
        parse_infer_request(document, max_images, explain, binary)
    return raised.value


# ---------------------------------------------------------------- reading a request


def test_parse_infer_request_reads_shapes_and_limits():
    frames = parse_infer_request(v2({"datatype": "UINT8", "shape": [2, 1, 28, 28], "data": [255] * (2 * 784)}), 256)
    assert frames.count == 2 and frames.frames.shape == (2, 28, 28) and frames.frames.max() == 1.0
    assert frames.frames.dtype == np.float32 and frames.encoded == []
    with pytest.raises(InputTooLarge):
        parse_infer_request(v2({"datatype": "BYTES", "shape": [3], "data": ["", "", ""]}), 2)
    with pytest.raises(InputError, match="unknown output 'attributions'"):  # only an explanation has them
        parse_infer_request(v2({"datatype": "BYTES", "shape": [1], "data": ["aGk="]},
                               outputs=[{"name": "attributions"}]), 2)
    explained = parse_infer_request(v2({"datatype": "BYTES", "shape": [1], "data": ["aGk="]},
                                       outputs=[{"name": "attributions"}]), 2, explain=True)
    assert explained.outputs == ["attributions"]


@pytest.mark.parametrize("shape, data, count", [
    ([28, 28], STROKE.reshape(-1).tolist(), 1),
    ([28, 28], STROKE.tolist(), 1),  # nested, row-major
    ([1, 28, 28], [STROKE.tolist()], 1),
    ([3, 28, 28], STROKE.reshape(-1).tolist() * 3, 3),
    ([2, 1, 28, 28], [[STROKE.tolist()]] * 2, 2),
])
def test_pixel_tensors_of_every_shape_become_frames(shape, data, count):
    request = parse_infer_request(v2({"datatype": "UINT8", "shape": shape, "data": data}), 256)
    assert request.count == count and request.frames.shape == (count, 28, 28)
    for frame in request.frames:
        np.testing.assert_allclose(frame, STROKE / 255.0, atol=1e-6)


@pytest.mark.parametrize("datatype", open_inference.PIXEL_DATATYPES)
def test_every_pixel_datatype_is_read(datatype):
    request = parse_infer_request(v2({"datatype": datatype, "shape": [28, 28], "data": STROKE.reshape(-1).tolist()}),
                                  256)
    np.testing.assert_allclose(request.frames[0], STROKE / 255.0, atol=1e-6)


def test_bytes_tensors_hold_base64_images_and_data_urls():
    request = parse_infer_request(v2({"datatype": "BYTES", "shape": [3],
                                      "data": [b64(PNG), "data:image/png;base64," + b64(PNG), b64(b"x")]}), 256)
    assert request.encoded == [PNG, PNG, b"x"] and request.frames is None and request.count == 3
    nested = parse_infer_request(v2({"datatype": "BYTES", "shape": [2, 1], "data": [[b64(PNG)], [b64(PNG)]]}), 256)
    assert nested.encoded == [PNG, PNG]


def test_the_request_keeps_its_id_input_name_and_the_outputs_it_asked_for():
    request = parse_infer_request({"id": "r-9", "inputs": [{"name": "digits", **PIXELS, "data": [0] * 784}],
                                   "outputs": [{"name": "labels", "parameters": {"binary_data": True}},
                                               {"name": "probabilities"}],
                                   "parameters": {"binary_data_output": False}}, 256)
    assert (request.id, request.input_name, request.outputs) == ("r-9", "digits", ["labels", "probabilities"])
    assert request.binary_by_output == {"labels": True} and not request.binary_output
    assert request.wants_binary("labels") and not request.wants_binary("probabilities")
    plain = parse_infer_request(v2({**PIXELS, "data": [0] * 784}), 256)
    assert plain.id == "" and plain.outputs is None and not plain.wants_binary("labels")
    everything = parse_infer_request(v2({**PIXELS, "data": [0] * 784}, parameters={"binary_data_output": True},
                                        outputs=[{"name": "labels", "parameters": {"binary_data": False}}]), 256)
    assert not everything.wants_binary("labels") and everything.wants_binary("probabilities")


def test_is_infer_request():
    assert open_inference.is_infer_request({"inputs": []})
    for other in ({"data": "x"}, [{"inputs": []}], b"inputs", "inputs", None):
        assert not open_inference.is_infer_request(other)


# ---------------------------------------------------------------- refusals and their labels


INFER = [
    ({"id": 7, **v2(PIXELS, data=[0] * 784)}, "bad_request", '"id" must be a string, got int'),
    ({"inputs": "x"}, "bad_request", '"inputs" must hold exactly one tensor'),
    ({"inputs": []}, "bad_request", '"inputs" must hold exactly one tensor'),
    ({"inputs": [v2(PIXELS)["inputs"][0]] * 2}, "bad_request", '"inputs" must hold exactly one tensor'),
    (v2({"datatype": "UINT8"}), "bad_request", "input tensor lacks 'shape', 'data'"),
    ({"inputs": [{"name": 1, **PIXELS, "data": [0] * 784}]}, "bad_request", 'input "name" must be a string'),
    (v2({**PIXELS, "shape": "28x28", "data": []}), "bad_request", '"shape" must be a list of non-negative integers'),
    (v2({**PIXELS, "shape": [-1, 28, 28], "data": []}), "bad_request",
     '"shape" must be a list of non-negative integers, got [-1, 28, 28]'),
    (v2({**PIXELS, "shape": [True, 28, 28], "data": []}), "bad_request",
     '"shape" must be a list of non-negative integers, got [True, 28, 28]'),
    (v2({**PIXELS, "data": [0] * 784}, outputs="labels"), "bad_request", '"outputs" must be a list of objects'),
    (v2({**PIXELS, "data": [0] * 784}, outputs=[{"name": "logits"}]), "bad_request",
     "unknown output 'logits': this model answers probabilities, labels"),
    (v2({**PIXELS, "data": [0] * 784}, outputs=[{"name": "labels", "parameters": []}]), "bad_request",
     "output 'labels' \"parameters\" must be an object, got list"),
    (v2({**PIXELS, "data": [0] * 784}, parameters={"binary_data_output": "yes"}), "bad_request",
     "the request's parameter binary_data_output must be true or false, got 'yes'"),
    (v2({**PIXELS, "data": "x"}), "bad_request", '"data" must be a list, got str'),
    (v2({**PIXELS, "data": ["a"] * 784}), "bad_pixels", "pixels must be an array of numbers 0-255"),
    (v2({**PIXELS, "data": [None] * 784}), "bad_pixels", "pixels must be an array of numbers 0-255"),
    (v2({**PIXELS, "data": [0] * 783}), "bad_request", "input holds 783 values, its shape [28, 28] needs 784"),
    (v2({**PIXELS, "data": [float("nan")] * 784}), "bad_pixels", "pixels hold NaN or infinite values"),
    (v2({**PIXELS, "data": [300] * 784}), "bad_pixels", "pixel values must lie in 0..255, got 300..300"),
    (v2({**PIXELS, "shape": [2, 27, 28], "data": [0] * 1512}), "bad_pixels",
     "pixel frames must be N x 28 x 28, got shape [2, 27, 28]"),
    (v2({**PIXELS, "shape": [300, 28, 28], "data": []}), "too_many_images",
     "300 images in one request; the limit is 256"),
    (v2({**PIXELS, "shape": [0, 28, 28], "data": []}), "empty_body", "no images in the request"),
    (v2({"datatype": "FP16", "shape": [28, 28], "data": [0] * 784}), "bad_request",
     "input datatype 'FP16' is not accepted"),
    (v2({"datatype": "BYTES", "shape": [1, 2], "data": ["", ""]}), "bad_request",
     "a BYTES input has shape [N] (one encoded image each), got [1, 2]"),
    (v2({"datatype": "BYTES", "shape": [2], "data": [""]}), "bad_request",
     "input holds 1 elements, its shape [2] needs 2"),
    (v2({"datatype": "BYTES", "shape": [1], "data": [7]}), "bad_base64", "image 0: not a base64 string: got int"),
    (v2({"datatype": "BYTES", "shape": [1], "data": ["%%%"]}), "bad_base64", "image 0: not valid base64"),
    (v2({"datatype": "BYTES", "shape": [2], "data": [b64(PNG), "%%%"]}), "bad_base64", "image 1: not valid base64"),
]


@pytest.mark.parametrize("document, label, words", INFER,
                         ids=[f"{index}-{label}" for index, (_, label, _) in enumerate(INFER)])
def test_each_refusal_of_an_open_inference_request_gets_its_label(document, label, words):
    error = refused(document)
    assert refusals.refusal(error).reason == label and str(error).startswith(words), str(error)


def test_an_input_with_no_data_at_all_says_why_it_may_have_none():
    """tritonclient's gRPC client sends raw_input_contents, which TorchServe drops: the data arrives empty."""
    for tensor in ({**PIXELS, "shape": [1, 28, 28], "data": []}, {"datatype": "BYTES", "shape": [1], "data": []}):
        error = refused(v2(tensor))
        assert open_inference.RAW_CONTENTS_HINT in str(error) and error.reason is Reason.BAD_REQUEST
    assert open_inference.RAW_CONTENTS_HINT not in str(refused(v2({**PIXELS, "data": [0] * 783})))


def test_the_same_fault_gets_the_same_refusal_in_v2_as_in_torchserves_own_formats():
    """One validator per fault: NaN pixels, bad base64 alike in JSON pixels, a .npy, a v2 tensor and JSON "images"."""
    limits = predictor.Limits(10, 3, 256)
    nan = [[float("nan")] * 28] * 28
    nan_refusals = [wire.read({"body": {"pixels": nan}}, limits).refusal,
                    wire.read({"body": npy_bytes(np.asarray(nan, np.float32))}, limits).refusal,
                    refused(v2({**PIXELS, "data": nan}))]
    assert {(str(error), error.reason) for error in nan_refusals} == {("pixels hold NaN or infinite values",
                                                                       Reason.BAD_PIXELS)}
    base64_refusals = [wire.read({"body": {"images": ["%%%"]}}, limits).refusal,
                       refused(v2({"datatype": "BYTES", "shape": [1], "data": ["%%%"]}))]
    assert {(str(error), error.reason) for error in base64_refusals} == {("image 0: not valid base64",
                                                                          Reason.BAD_BASE64)}


# ---------------------------------------------------------------- decoding the encoded images


def test_decode_infer_request_gives_the_predictor_its_images():
    frames = wire.decode_infer_request(parse_infer_request(v2({**PIXELS, "data": [0] * 784}), 256))
    assert (frames.kind, frames.many, frames.topk, len(frames.images)) == ("oip", True, 1, 1)
    encoded = wire.decode_infer_request(parse_infer_request(v2({"datatype": "BYTES", "shape": [2],
                                                                "data": [b64(PNG)] * 2}), 256))
    assert (encoded.kind, encoded.many, len(encoded.images)) == ("oip", True, 2)
    assert encoded.images[0].shape == (28, 28)


@pytest.mark.parametrize("images, reason, message", [
    ([b"junk"], Reason.NOT_AN_IMAGE, "image 0: not an image"),
    ([PNG, b"junk"], Reason.NOT_AN_IMAGE, "image 1: not an image"),
    ([b""], Reason.EMPTY_BODY, "image 0: empty body"),
    ([PNG[:60]], Reason.UNREADABLE_IMAGE, "image 0: unreadable image"),
    ([png_bytes(np.full((4, 40), 255, np.uint8))], Reason.IMAGE_TOO_SMALL, "image 0: image too small"),
])
def test_decoded_images_that_are_refused_get_their_labels(images, reason, message):
    encoded = parse_infer_request(v2({"datatype": "BYTES", "shape": [len(images)],
                                      "data": [b64(image) for image in images]}), 256)
    with pytest.raises(InputError) as raised:
        wire.decode_infer_request(encoded)
    assert raised.value.reason is reason and str(raised.value).startswith(message)


# ---------------------------------------------------------------- the binary tensor data extension


def bytes_elements(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def test_split_binary_body_reads_the_json_header_and_the_bytes_after_it():
    header = json.dumps({"inputs": []}).encode()
    assert open_inference.split_binary_body(header + b"\x01\x02", str(len(header))) == ({"inputs": []}, b"\x01\x02")
    assert open_inference.split_binary_body(header, str(len(header))) == ({"inputs": []}, b"")


@pytest.mark.parametrize("length, reason, words", [
    ("12x", Reason.BAD_REQUEST, "Inference-Header-Content-Length must be a byte count, got '12x'"),
    ("99999", Reason.BAD_REQUEST, "Inference-Header-Content-Length is 99999, but the body holds 20 bytes"),
    ("0", Reason.BAD_REQUEST, "Inference-Header-Content-Length is 0"),
    ("-3", Reason.BAD_REQUEST, "Inference-Header-Content-Length is -3"),
    ("5", Reason.BAD_JSON, "invalid JSON in the body's first 5 bytes (Inference-Header-Content-Length)"),
])
def test_split_binary_body_refuses_a_length_that_does_not_fit(length, reason, words):
    body = json.dumps({"inputs": []}).encode() + b"\x00" * 6
    assert len(body) == 20
    with pytest.raises(InputError) as raised:
        open_inference.split_binary_body(body, length)
    assert raised.value.reason is reason and str(raised.value).startswith(words)


def test_split_bytes_elements():
    assert open_inference.split_bytes_elements(b"") == []
    assert open_inference.split_bytes_elements(bytes_elements([b"ab", b"", b"cde"])) == [b"ab", b"", b"cde"]
    with pytest.raises(InputError, match="BYTES data ends inside element 1's 4-byte length"):
        open_inference.split_bytes_elements(bytes_elements([b"ab"]) + b"\x01\x00")
    with pytest.raises(InputError, match="BYTES element 0 claims 9 bytes, 4 remain"):
        open_inference.split_bytes_elements(b"\x09\x00\x00\x00abcd")


def test_binary_input_is_the_bodys_bytes_exactly():
    tensor = {"name": "x", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 4}}
    assert open_inference.binary_input(tensor, b"abcd") == b"abcd"
    assert open_inference.binary_input({"name": "x", "data": []}, b"") is None
    assert open_inference.binary_input({**tensor, "parameters": {"binary_data_size": 0}}, b"") == b""


@pytest.mark.parametrize("tensor, binary, words", [
    ({"data": ["aGk="]}, b"abcd", "4 bytes follow the JSON header, but the input has no parameters.binary_data_size"),
    ({"parameters": {"binary_data_size": -1}}, b"", "binary_data_size must be a non-negative integer, got -1"),
    ({"parameters": {"binary_data_size": True}}, b"a", "binary_data_size must be a non-negative integer, got True"),
    ({"parameters": {"binary_data_size": "4"}}, b"abcd", "binary_data_size must be a non-negative integer, got '4'"),
    ({"data": ["aGk="], "parameters": {"binary_data_size": 4}}, b"abcd", 'the input has both "data" and binary data'),
    ({"parameters": {"binary_data_size": 8}}, b"abcdefg", "the input's binary_data_size is 8, but 7 bytes follow"),
    ({"parameters": []}, b"", 'input "parameters" must be an object, got list'),
])
def test_binary_input_refuses_bytes_that_do_not_fit(tensor, binary, words):
    with pytest.raises(InputError) as raised:
        open_inference.binary_input({"name": "x", **tensor}, binary)
    assert raised.value.reason is Reason.BAD_REQUEST and str(raised.value).startswith(words), str(raised.value)


@pytest.mark.parametrize("datatype, dtype", [("UINT8", "<u1"), ("FP32", "<f4"), ("INT64", "<i8"), ("UINT16", "<u2"),
                                             ("FP64", "<f8")])
def test_binary_pixels_are_read_little_endian(datatype, dtype):
    frames = np.stack([STROKE, 255 - STROKE])
    raw = frames.astype(dtype).tobytes()
    document = v2({"datatype": datatype, "shape": [2, 28, 28], "parameters": {"binary_data_size": len(raw)}})
    request = parse_infer_request(document, 256, binary=raw)
    np.testing.assert_allclose(request.frames, frames / 255.0, atol=1e-6)
    if np.dtype(dtype).itemsize > 1:  # the same bytes read big-endian are other values: the order matters
        assert not np.allclose(np.frombuffer(raw, np.dtype(dtype).newbyteorder(">")), frames.reshape(-1))


def test_binary_images_and_their_refusals():
    raw = bytes_elements([PNG, PNG])
    request = parse_infer_request(v2({"datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(raw)}}),
                                  256, binary=raw)
    assert request.encoded == [PNG, PNG]  # raw images, not base64
    one = bytes_elements([b"abcd"])
    error = refused(v2({"datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 8}}), binary=one)
    assert str(error) == "input holds 1 elements, its shape [2] needs 2"
    pixels = refused(v2({"datatype": "UINT8", "shape": [1, 28, 28], "parameters": {"binary_data_size": 700}}),
                     binary=bytes(700))
    assert str(pixels) == "binary input holds 700 bytes, its shape [1, 28, 28] of UINT8 needs 784"
    nan = np.full((28, 28), np.nan, "<f4").tobytes()
    error = refused(v2({"datatype": "FP32", "shape": [28, 28], "parameters": {"binary_data_size": len(nan)}}),
                    binary=nan)
    assert (str(error), error.reason) == ("pixels hold NaN or infinite values", Reason.BAD_PIXELS)


# ---------------------------------------------------------------- answers


def test_the_encoder_writes_what_the_extension_specifies():
    request = InferRequest("i", "x", None, binary_output=True)
    answer = {"id": "i", "model_name": "digits", "model_version": "1.0",
              "outputs": [open_inference.output_tensor("probabilities", "FP32", [1, 2], [0.25, 0.75]),
                          open_inference.output_tensor("labels", "BYTES", [1], ["7"])]}
    body, length = open_inference.encode_infer_response(request, answer)
    header = json.loads(body[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 5}
    assert body[length:] == struct.pack("<ff", 0.25, 0.75) + b"\x01\x00\x00\x007"
    assert answer["outputs"][0]["data"] == [0.25, 0.75]  # the answer itself is left as it was


def test_the_encoder_writes_json_where_nothing_asks_for_binary_and_binary_only_where_asked():
    answer = {"id": "i", "model_name": "digits", "model_version": "1.0",
              "outputs": [open_inference.output_tensor("probabilities", "FP32", [1, 2], [0.25, 0.75]),
                          open_inference.output_tensor("labels", "BYTES", [1], ["7"])]}
    body, length = open_inference.encode_infer_response(InferRequest("i", "x", None), answer)
    assert length is None and json.loads(body) == answer
    one = InferRequest("i", "x", None, binary_by_output={"labels": True})
    body, length = open_inference.encode_infer_response(one, answer)
    header = json.loads(body[:length])
    assert header["outputs"][0]["data"] == [0.25, 0.75] and "data" not in header["outputs"][1]
    assert body[length:] == b"\x01\x00\x00\x007"


def test_format_infer_response_answers_the_outputs_asked_for():
    request = InferRequest("r", "x", None)
    answer = open_inference.format_infer_response(request, "digits", "2.0", [[0.1, 0.9], [0.8, 0.2]], ["1", "0"])
    assert (answer["id"], answer["model_name"], answer["model_version"]) == ("r", "digits", "2.0")
    assert answer["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [0.1, 0.9, 0.8, 0.2]},
        {"name": "labels", "datatype": "BYTES", "shape": [2], "data": ["1", "0"]}]
    frames = [np.full((28, 28), index / 10).tolist() for index in range(2)]
    explained = open_inference.format_infer_response(InferRequest("r", "x", ["images", "labels"]), "digits", "2.0",
                                                     [[0.1, 0.9], [0.8, 0.2]], ["1", "0"], frames, frames)
    assert [tensor["name"] for tensor in explained["outputs"]] == ["images", "labels"]
    images = explained["outputs"][0]
    assert images["shape"] == [2, 28, 28] and images["data"] == [0.0] * 784 + [0.1] * 784


def test_format_grpc_error_carries_the_refusal_in_band():
    body = open_inference.format_grpc_error("g-7", "digits", "1.0", 400, "image 0: not an image")
    assert body == {"id": "g-7", "model_name": "digits", "model_version": "1.0",
                    "outputs": [{"name": "error", "datatype": "BYTES", "shape": [1],
                                 "data": [{"code": 400, "error": "image 0: not an image"}]}]}
    assert json.loads(json.dumps(body)) == body  # what TorchServe's gRPC frontend reads back
