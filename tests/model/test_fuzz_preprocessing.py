"""Property-based fuzzing (hypothesis) of everything that reads client bytes.

Any input gives a tensor of the right shape, dtype and range, or the project's own InputError; never another
exception. Seeds: real encodings of a real scan in every accepted format, mutated (flipped bytes, cuts,
insertions), beside arbitrary bytes, arbitrary .npy headers and arbitrary JSON documents.
"""
from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handler import digit_handler
from model import preprocessing
from model.preprocessing import InputError
from tests.support.images import encode, sklearn_scans_u8

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
LOW = (0.0 - preprocessing.MEAN) / preprocessing.STD
HIGH = (1.0 - preprocessing.MEAN) / preprocessing.STD


def seeds() -> list[bytes]:
    from PIL import Image

    scan = np.kron(sklearn_scans_u8()[0][0], np.ones((4, 4), np.uint8))  # 32x32, a real digit
    image = Image.fromarray(scan)
    made = [encode(image, fmt) for fmt in ("PNG", "JPEG", "BMP", "GIF", "WEBP")]
    made.append(encode(image.convert("RGBA"), "PNG"))
    made.append(encode(image.convert("P"), "PNG"))
    return made


SEEDS = seeds()


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        action = draw(st.sampled_from(("flip", "cut", "insert", "overwrite")))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[position : position + draw(st.integers(1, 64))]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=32))
        else:
            patch = draw(st.binary(min_size=1, max_size=8))
            data[position : position + len(patch)] = patch
    return bytes(data)


def assert_network_input(tensor: torch.Tensor, count: int = 1) -> None:
    assert tensor.shape == (count, 28, 28) or tensor.shape == (count, 1, 28, 28)
    assert tensor.dtype == torch.float32
    assert torch.isfinite(tensor).all()
    assert tensor.min() >= LOW - 1e-5 and tensor.max() <= HIGH + 1e-5


@FUZZ
@given(st.one_of(mutated_images(), st.binary(max_size=512)))
def test_any_bytes_become_an_input_or_an_input_error(data):
    try:
        tensor = preprocessing.image_bytes_to_tensor(data, 10)
    except InputError:
        return
    assert_network_input(tensor)


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
@given(st.one_of(npy_files(), st.binary(max_size=200).map(lambda tail: preprocessing.NPY_MAGIC + tail)))
def test_any_npy_becomes_frames_or_an_input_error(data):
    try:
        frames = preprocessing.decode_npy_frames(data)
    except InputError:
        return
    assert frames.ndim == 3 and frames.shape[1:] == (28, 28) and 1 <= len(frames) <= 256
    assert frames.dtype == np.float32 and np.isfinite(frames).all()
    assert frames.min() >= 0.0 and frames.max() <= 1.0
    try:
        tensor = preprocessing.frames_to_tensor(frames, 10)
    except InputError:
        return
    assert_network_input(tensor, len(frames))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=30) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=900,
)


@st.composite
def json_requests(draw):
    """JSON documents shaped like requests: the real keys with arbitrary values, or anything at all."""
    grids = st.integers(0, 2**32 - 1).map(lambda seed: np.random.default_rng(seed).integers(0, 256, (28, 28)).tolist())
    pixel_rows = grids | st.lists(st.lists(st.floats(-10, 300) | st.integers(-5, 300), min_size=27, max_size=29),
                                  min_size=27, max_size=29)
    base64_images = st.one_of(mutated_images(), st.sampled_from(SEEDS)).map(lambda data: base64.b64encode(data).decode())
    topk = st.integers(-1, 12) | json_values
    document = draw(st.one_of(
        json_values,
        st.fixed_dictionaries({"pixels": pixel_rows | json_values}, optional={"topk": topk}),
        st.fixed_dictionaries({"data": base64_images | st.text(max_size=40) | json_values}, optional={"topk": topk}),
        st.fixed_dictionaries({"images": st.lists(base64_images | st.text(max_size=20), max_size=5) | json_values},
                              optional={"topk": topk}),
    ))
    return document


@FUZZ
@given(json_requests(), st.sampled_from(["parsed", "bytes", "text"]))
def test_any_json_becomes_a_request_or_an_input_error(document, form):
    if form == "parsed":  # as TorchServe hands over application/json bodies
        row = {"body": document}
    else:
        text = json.dumps(document, allow_nan=True)
        row = {"body": bytearray(text.encode()) if form == "bytes" else text}
    try:
        decoded = digit_handler.parse_request(row, 3, 10)
    except InputError:
        return
    assert 1 <= decoded.topk <= 10 and 1 <= len(decoded.images) <= 256
    inputs, (refusal,) = digit_handler.preprocess([decoded], 10)
    assert refusal is None or isinstance(refusal, InputError)
    assert_network_input(inputs, len(decoded.images))


@pytest.mark.parametrize("pixels", [[[math.nan] * 28] * 28, [[math.inf] * 28] * 28, [[1e300] * 28] * 28,
                                    [["7"] * 28] * 28, [[None] * 28] * 28, [[[0, 0]] * 28] * 28])
def test_pixel_arrays_with_non_numbers_are_input_errors(pixels):
    with pytest.raises(InputError):
        preprocessing.pixels_to_tensor(pixels, 10)
