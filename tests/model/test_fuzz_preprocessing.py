"""Property-based fuzzing (hypothesis) of the preprocessing's decoders and geometry.

Any bytes give a tensor of the right shape, dtype and range, or the preprocessing's own ImageError with a kind of the
fixed set; never another exception. Seeds: real encodings of a real scan in every accepted format, mutated (flipped
bytes, cuts, insertions), beside arbitrary bytes. What reads requests (.npy files, JSON, Open Inference Protocol
documents) is fuzzed through the reader a worker runs, in tests/handler/test_wire.py, with these seeds.
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from model import preprocessing
from model.preprocessing import ImageError
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
def test_any_bytes_become_an_input_or_an_image_error(data):
    try:
        tensor = preprocessing.image_bytes_to_tensor(data, 10)
    except ImageError as error:
        assert error.kind in ImageError.KINDS
        return
    assert_network_input(tensor)


@FUZZ
@given(st.one_of(mutated_images(), st.binary(max_size=512)))
def test_decoded_pixels_are_grey_in_their_range(data):
    """decode_grey: uint8 from the fast PNG path, float32 in [0, 1] from Pillow, always 2-D and at least
    MIN_IMAGE_SIDE a side."""
    try:
        grey = preprocessing.decode_grey(data)
    except ImageError as error:
        assert error.kind in ImageError.KINDS
        return
    assert grey.ndim == 2 and min(grey.shape) >= preprocessing.MIN_IMAGE_SIDE
    assert grey.size <= preprocessing.MAX_IMAGE_PIXELS
    if grey.dtype != np.uint8:
        assert grey.dtype == np.float32 and np.isfinite(grey).all() and 0.0 <= grey.min() and grey.max() <= 1.0


greys = st.one_of(
    hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40)),
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
               elements=st.floats(0.0, 1.0, width=32)),
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
               elements=st.floats(0.0, 1.0, width=32)),  # not images: refused, never a crash
)


@FUZZ
@given(st.lists(greys, min_size=1, max_size=6), st.sampled_from([20, 10, 8]))
def test_any_grey_images_become_frames_or_image_errors_each_as_alone(images, resolution):
    """A batch of any sizes and pixel types: frames in [0, 1], a refused image's frame zeros, and each image's frame
    and refusal what it gets alone."""
    frames, errors = preprocessing.to_mnist_geometry_batch(images, resolution)
    assert frames.shape == (len(images), 28, 28) and frames.dtype == torch.float32
    assert torch.isfinite(frames).all() and frames.min() >= 0.0 and frames.max() <= 1.0
    for index, (image, error) in enumerate(zip(images, errors)):
        assert error is None or (isinstance(error, ImageError) and error.kind in ("blank_image", "unreadable_image"))
        if error is not None:
            assert frames[index].abs().sum() == 0
        alone, (alone_error,) = preprocessing.to_mnist_geometry_batch([image], resolution)
        assert str(alone_error) == str(error)
        torch.testing.assert_close(alone[0], frames[index], atol=1e-5, rtol=0)
