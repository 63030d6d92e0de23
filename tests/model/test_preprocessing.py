"""The shared preprocessing (model/preprocessing.py): decoding every accepted image format, every refusal of an image
with its kind, MNIST geometry, normalisation and the label map. What reads requests (.npy files, JSON pixel arrays)
is handler/wire.py's: tests/handler/test_wire.py."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from model import preprocessing
from model.preprocessing import ImageError
from tests.support import ROOT
from tests.support.images import encode, png_bytes, png_header_only, sklearn_scans_u8


def digit_seven(size: int = 28, ink: int = 255, background: int = 0) -> np.ndarray:
    """A crude '7' drawn in a size x size grey image."""
    image = np.full((size, size), background, dtype=np.uint8)
    s = size / 28
    image[int(5 * s) : int(8 * s), int(6 * s) : int(22 * s)] = ink
    for row in range(int(8 * s), int(24 * s)):
        col = int(22 * s - (row - 8 * s) * 0.5)
        image[row, max(col - int(2 * s), 0) : col + 1] = ink
    return image


def centre_of_mass(frame: np.ndarray) -> tuple[float, float]:
    total = frame.sum()
    rows, cols = np.indices(frame.shape)
    return float((rows * frame).sum() / total), float((cols * frame).sum() / total)


def test_geometry_is_28x28_white_on_black_centred_with_20px_box():
    frame = preprocessing.to_mnist_geometry(digit_seven(100) / 255.0)
    assert frame.shape == (28, 28) and frame.dtype == np.float32
    assert 0.0 <= frame.min() and frame.max() <= 1.0
    rows = np.flatnonzero(frame.max(axis=1) > 0.1)
    cols = np.flatnonzero(frame.max(axis=0) > 0.1)
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (19, 20, 21)
    com_y, com_x = centre_of_mass(frame)
    assert abs(com_y - 13.5) <= 1.0 and abs(com_x - 13.5) <= 1.0


def test_dark_digit_on_light_background_is_inverted():
    light = preprocessing.to_mnist_geometry(digit_seven(56, ink=20, background=235) / 255.0)
    dark = preprocessing.to_mnist_geometry(digit_seven(56) / 255.0)
    assert light[0, 0] == 0.0  # background became black
    np.testing.assert_allclose(light, dark, atol=0.05)


def test_grey_background_is_removed_and_ink_stretched():
    frame = preprocessing.to_mnist_geometry(digit_seven(28, ink=180, background=60) / 255.0)
    assert frame.max() > 0.95 and frame[0, 0] == 0.0


def test_mnist_style_input_is_nearly_unchanged():
    """A 28x28 digit already in MNIST geometry (20px box, centred) passes through almost as it is."""
    once = preprocessing.to_mnist_geometry(digit_seven(28) / 255.0)
    twice = preprocessing.to_mnist_geometry(once)
    assert np.abs(once - twice).mean() < 0.02


@pytest.mark.parametrize(
    "mode,fmt",
    [("L", "PNG"), ("RGB", "PNG"), ("RGB", "JPEG"), ("CMYK", "JPEG"), ("L", "BMP"), ("P", "GIF"), ("RGB", "WEBP"),
     ("1", "PNG"), ("LA", "PNG")],
)
def test_decodes_formats_and_modes(mode, fmt):
    image = Image.fromarray(digit_seven(64)).convert(mode)
    tensor = preprocessing.image_bytes_to_tensor(encode(image, fmt))
    reference = preprocessing.image_bytes_to_tensor(png_bytes(digit_seven(64)))
    assert tensor.shape == (1, 28, 28) and tensor.dtype == torch.float32
    assert torch.isfinite(tensor).all()
    assert (tensor - reference).abs().mean() < 0.15  # lossy formats differ a little


def test_16_bit_png():
    pixels16 = digit_seven(40).astype(np.uint16) * 257
    tensor = preprocessing.image_bytes_to_tensor(encode(Image.fromarray(pixels16), "PNG"))
    reference = preprocessing.image_bytes_to_tensor(png_bytes(digit_seven(40)))
    torch.testing.assert_close(tensor, reference, atol=1e-3, rtol=0)


@pytest.mark.parametrize("stroke", [0, 255])
def test_transparent_background_keeps_the_strokes(stroke):
    """A screen drawing: strokes (black or white) on a fully transparent canvas."""
    alpha = digit_seven(64)
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., :3] = stroke
    rgba[..., 3] = alpha
    tensor = preprocessing.image_bytes_to_tensor(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    reference = preprocessing.image_bytes_to_tensor(png_bytes(digit_seven(64)))
    torch.testing.assert_close(tensor, reference, atol=0.05, rtol=0)


def test_palette_png_with_transparency():
    """A palette image whose background entry is grey but transparent, with white strokes: decoded, the background
    is flattened to black (under light strokes), not read as its grey."""
    strokes = digit_seven(32) > 127
    image = Image.fromarray(strokes.astype(np.uint8), "P")
    image.putpalette([128, 128, 128, 255, 255, 255] + [0, 0, 0] * 254)  # 0: grey (transparent), 1: white
    grey = preprocessing.decode_image(encode(image, "PNG", transparency=0))
    np.testing.assert_allclose(grey, strokes.astype(np.float32), atol=1e-6)


@pytest.mark.parametrize("stroke, background", [(0, 1.0), (255, 0.0)])
def test_alpha_is_flattened_onto_a_background_that_contrasts_with_the_strokes(stroke, background):
    """Opaque, half-transparent and transparent pixels of one stroke colour: grey = stroke x alpha + the
    background (white under dark strokes, black under light ones) x (1 - alpha)."""
    alpha = np.array([[255, 128, 0], [255, 255, 0]], dtype=np.uint8)
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., :3] = stroke
    rgba[..., 3] = alpha
    grey = preprocessing.image_to_grey(Image.fromarray(rgba, "RGBA"))
    a = alpha / 255.0
    np.testing.assert_allclose(grey, stroke / 255.0 * a + background * (1 - a), atol=1e-6)
    assert grey.dtype == np.float32


def test_animated_gif_uses_the_first_frame():
    first = Image.fromarray(digit_seven(32)).convert("P")
    second = Image.fromarray(255 - digit_seven(32)).convert("P")
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100)
    reference = preprocessing.image_bytes_to_tensor(encode(first, "GIF"))
    torch.testing.assert_close(preprocessing.image_bytes_to_tensor(data), reference)


def test_large_image_is_scaled_down():
    tensor = preprocessing.image_bytes_to_tensor(png_bytes(digit_seven(1000)))
    assert tensor.shape == (1, 28, 28)


@pytest.mark.parametrize(
    "data,message,kind",
    [
        (b"", "not an image: expected one of", "not_an_image"),  # the request's "empty body" is handler/refusals.py's
        (b"hello, I am text", "not an image", "not_an_image"),
        (bytes(range(256)) * 4, "not an image", "not_an_image"),
        (png_bytes(digit_seven(28))[:60], "unreadable image", "unreadable_image"),
        (png_header_only(50_000, 50_000), "image too large: 2500000000 pixels", "image_too_large"),
        (png_header_only(5000, 4000), "image too large: 5000x4000 pixels", "image_too_large"),
        (png_bytes(np.full((1, 1), 255, np.uint8)), "image too small: 1x1", "image_too_small"),
        (png_bytes(np.zeros((28, 28), np.uint8)), "blank image: no digit found", "blank_image"),
        (png_bytes(np.full((28, 28), 200, np.uint8)), "blank image: no digit found", "blank_image"),
    ],
    ids=["empty", "text", "random", "truncated", "bomb", "over-limit", "1x1", "black", "flat-grey"],
)
def test_bad_images_raise_an_image_error_of_their_kind(data, message, kind):
    with pytest.raises(ImageError) as raised:
        preprocessing.image_bytes_to_tensor(data)
    assert raised.value.kind == kind and str(raised.value).startswith(message), str(raised.value)


def test_tiff_is_not_an_accepted_format():
    with pytest.raises(ImageError, match="not an image") as raised:
        preprocessing.decode_image(encode(Image.fromarray(digit_seven(28)), "TIFF"))
    assert raised.value.kind == "not_an_image"


def test_an_image_error_needs_a_kind_of_the_fixed_set():
    assert ImageError("words", "blank_image").kind == "blank_image" and issubclass(ImageError, ValueError)
    with pytest.raises(ValueError, match="'empty_body' is not one of"):
        ImageError("words", "empty_body")  # a request's reason, not an image's
    with pytest.raises(TypeError):
        ImageError("words without a kind")


def test_a_float_image_holding_nan_is_bad_pixels():
    pixels = np.full((28, 28), np.nan, np.float32)
    with pytest.raises(ImageError, match="NaN or infinite") as raised:
        preprocessing.image_to_grey(Image.fromarray(pixels, "F"))
    assert raised.value.kind == "bad_pixels"
    tiff = encode(Image.fromarray(pixels, "F"), "TIFF")  # the one format that carries float pixels is refused first
    with pytest.raises(ImageError) as raised:
        preprocessing.decode_grey(tiff)
    assert raised.value.kind == "not_an_image"


def test_geometry_refuses_blank_and_odd_images_with_their_kinds():
    _, (odd,) = preprocessing.to_mnist_geometry_batch([np.zeros((2, 2, 2))])
    assert odd.kind == "unreadable_image" and str(odd) == "expected a 2-D grey image, got shape [2, 2, 2]"
    _, (empty,) = preprocessing.to_mnist_geometry_batch([np.zeros((0, 5))])
    assert empty.kind == "unreadable_image"
    with pytest.raises(ImageError, match="blank image: no digit found") as raised:
        preprocessing.to_mnist_geometry(np.zeros((28, 28), np.float32))
    assert raised.value.kind == "blank_image"


def test_normalize_uses_mnist_statistics():
    tensor = preprocessing.normalize(np.zeros((28, 28), np.float32))
    assert tensor.shape == (1, 28, 28)
    assert torch.allclose(tensor, torch.full_like(tensor, -preprocessing.MEAN / preprocessing.STD))


def test_every_training_scan_decodes_through_the_serving_path():
    images, _ = sklearn_scans_u8()
    for scan in images[:50]:
        assert preprocessing.image_bytes_to_tensor(png_bytes(scan)).shape == (1, 28, 28)


def test_labels_from_mapping():
    assert preprocessing.labels_from_mapping({"1": "b", "0": "a"}) == ["a", "b"]
    with pytest.raises(ValueError, match="gaps"):
        preprocessing.labels_from_mapping({"0": "a", "2": "c"})


def test_a_stack_of_frames_matches_one_by_one():
    """An N x 28 x 28 array (a .npy's frames) through the batched geometry and normalize: each frame as alone."""
    images, _ = sklearn_scans_u8()
    frames = np.stack([preprocessing.to_mnist_geometry(image / 255.0) for image in images[:8]])
    geometric, errors = preprocessing.to_mnist_geometry_batch(frames, 10)
    batch = preprocessing.normalize(geometric)
    assert batch.shape == (8, 1, 28, 28) and errors == [None] * 8
    for index in range(8):
        assert torch.equal(batch[index], preprocessing.normalize(preprocessing.to_mnist_geometry(frames[index], 10)))


def test_noisy_backgrounds_of_odd_shapes_match_the_reference():
    """Noisy light or dark backgrounds (the border's median decides the polarity and the background level),
    non-square images: the batched geometry equals the per-image reference."""
    rng = np.random.default_rng(0)
    for height, width in ((8, 8), (9, 8), (28, 28), (30, 41), (64, 20)):
        for light in (False, True):
            grey = rng.random((height, width)).astype(np.float32) * 0.3 + (0.6 if light else 0.05)
            seven = np.asarray(Image.fromarray(digit_seven(28)).resize((width, height))) / 255.0
            grey = np.where(seven > 0.5, 0.0 if light else 1.0, grey).astype(np.float32)
            for resolution in (20, 8):
                np.testing.assert_allclose(preprocessing.to_mnist_geometry(grey, resolution),
                                           old_to_mnist_geometry(grey, resolution), atol=1e-4)


def old_to_mnist_geometry(grey: np.ndarray, resolution: int) -> np.ndarray:
    """The per-image numpy + Pillow geometry served until the batched one replaced it (kept here as the reference)."""
    low, high = float(grey.min()), float(grey.max())
    border = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    background = float(np.median(border))
    if background > 0.5:
        grey, background, high = 1.0 - grey, 1.0 - background, 1.0 - low
    ink = np.clip((grey - background) / max(high - background, 1e-6), 0.0, 1.0).astype(np.float32)
    rows, cols = np.flatnonzero((ink > 0.1).any(axis=1)), np.flatnonzero((ink > 0.1).any(axis=0))
    box = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = box.shape
    box = Image.fromarray(box, mode="F")
    if resolution < max(height, width):
        scale = resolution / max(height, width)
        box = box.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
    scale = 20 / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    box = np.clip(np.asarray(box.resize((new_w, new_h), Image.BILINEAR), dtype=np.float32), 0.0, 1.0)
    com_y = float(box.sum(axis=1) @ np.arange(new_h)) / float(box.sum())
    com_x = float(box.sum(axis=0) @ np.arange(new_w)) / float(box.sum())
    top = min(max(round(13.5 - com_y), 0), 28 - new_h)
    left = min(max(round(13.5 - com_x), 0), 28 - new_w)
    frame = np.zeros((28, 28), dtype=np.float32)
    frame[top : top + new_h, left : left + new_w] = box
    return frame


@pytest.mark.parametrize("resolution", [20, 10, 8])
def test_batched_geometry_matches_the_per_image_pillow_geometry(resolution, test_split):
    """Real MNIST digits, 8x8 scans and larger images of both polarities, at every training resolution: the batched
    matrix resize reproduces Pillow's antialiased BILINEAR resize and the whole-pixel centring."""
    images = list(test_split[0][:60] / 255.0) + list(sklearn_scans_u8()[0][:30] / 255.0)
    images += [digit_seven(100) / 255.0, 1.0 - digit_seven(56) / 255.0, digit_seven(40, ink=180, background=60) / 255.0]
    frames, errors = preprocessing.to_mnist_geometry_batch(images, resolution)
    assert errors == [None] * len(images) and frames.shape == (len(images), 28, 28)
    for image, frame in zip(images, frames.numpy()):
        np.testing.assert_allclose(frame, old_to_mnist_geometry(image.astype(np.float32), resolution), atol=1e-4)


@pytest.mark.parametrize("resolution", [20, 8])
def test_a_lone_image_takes_the_per_image_path_and_gets_the_batched_frame_exactly(resolution, test_split):
    """A batch of one on the CPU (a request alone in its batch; the peer's every request) takes _geometry_of_image,
    which must give exactly the frame and the refusal the batched code gives the same image beside another."""
    rng = np.random.default_rng(1)
    images = list(test_split[0][:200]) + list(sklearn_scans_u8()[0][:40])
    images += [digit_seven(100), 255 - digit_seven(56), digit_seven(40, ink=180, background=60),
               digit_seven(28)[:, 3:], np.pad(digit_seven(20), ((0, 30), (0, 0))), digit_seven(8),
               (rng.random((30, 41)) * 0.3 + 0.6).astype(np.float32), digit_seven(28) / 255.0,
               np.zeros((28, 28), np.uint8), np.full((9, 12), 200, np.uint8),  # blank: dark and light
               np.eye(28, dtype=np.uint8) * 255, np.pad(np.full((2, 2), 255, np.uint8), 13)]  # a line, a dot
    called = []
    real = preprocessing._geometry_of_image
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(preprocessing, "_geometry_of_image", lambda *args: called.append(1) or real(*args))
        for image in images:
            alone, alone_errors = preprocessing.to_mnist_geometry_batch([image], resolution)
            beside, beside_errors = preprocessing.to_mnist_geometry_batch([image, image], resolution)
            assert torch.equal(alone[0], beside[0])
            assert [str(error) for error in alone_errors] == [str(error) for error in beside_errors[:1]]
            assert [getattr(error, "kind", None) for error in alone_errors] == [
                getattr(error, "kind", None) for error in beside_errors[:1]]
    assert len(called) == len(images)
    assert [str(error) for error in preprocessing.to_mnist_geometry_batch(images[-4:-2], resolution)[1]] == [
        "blank image: no digit found"] * 2


def test_batch_of_mixed_sizes_and_pixel_types_equals_one_by_one():
    seven = digit_seven(64)
    images = [seven, seven / 255.0, digit_seven(28), np.zeros((28, 28), np.uint8), digit_seven(28) / 255.0,
              np.zeros((3, 3, 3)), torch.from_numpy(digit_seven(40))]
    frames, errors = preprocessing.to_mnist_geometry_batch(images, 10)
    assert [str(error) if error else None for error in errors] == [
        None, None, None, "blank image: no digit found", None, "expected a 2-D grey image, got shape [3, 3, 3]", None]
    assert [error.kind if error else None for error in errors] == [None, None, None, "blank_image", None,
                                                                  "unreadable_image", None]
    for index in (0, 1, 2, 4, 6):
        alone = preprocessing.to_mnist_geometry(np.asarray(images[index], dtype=np.float32) / (
            255.0 if np.asarray(images[index]).dtype == np.uint8 else 1.0), 10)
        np.testing.assert_allclose(frames[index].numpy(), alone, atol=1e-6)
    assert frames[3].abs().sum() == 0


def test_geometry_runs_on_the_device_it_is_given():
    """On the CPU it runs in numpy, on any other device in torch there: the same frames either way."""
    images = [digit_seven(28), digit_seven(64, ink=20, background=235)]
    on_cpu, _ = preprocessing.to_mnist_geometry_batch(images, 10, "cpu")
    # The torch implementation, forced on the CPU (what a GPU worker runs, on its GPU)
    stacked = torch.from_numpy(np.stack([image.astype(np.float32) / 255.0 for image in images[:1]]))
    frames, blank = preprocessing._geometry_of_group(stacked, 10)
    assert isinstance(frames, torch.Tensor) and not blank.any()
    torch.testing.assert_close(frames, on_cpu[:1], atol=1e-5, rtol=0)
    if torch.cuda.is_available():
        on_gpu, errors = preprocessing.to_mnist_geometry_batch(images, 10, "cuda")
        assert on_gpu.device.type == "cuda" and errors == [None, None]
        torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-5, rtol=0)


def test_fast_png_decoder_gives_pillows_pixels():
    rng = np.random.default_rng(0)
    for pixels in (digit_seven(28), rng.integers(0, 256, (33, 17), dtype=np.uint8),
                   rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)):
        for options in ({}, {"optimize": True}, {"compress_level": 0}):
            data = encode(Image.fromarray(pixels), "PNG", **options)
            fast = preprocessing.decode_plain_png(data)
            assert fast is not None and fast.dtype == np.uint8
            np.testing.assert_array_equal(fast.astype(np.float32) / 255.0, preprocessing.decode_with_pillow(data))
            assert preprocessing.decode_image(data).dtype == np.float32


def test_fast_png_decoder_loads_torchvisions_operator_without_its_python_package():
    """A fresh interpreter (as a TorchServe worker is) decodes a PNG with torchvision's operator and never imports
    torchvision, torch._dynamo or SymPy; the mode it passes is torchvision's UNCHANGED."""
    script = ("import sys; import numpy as np; from model import preprocessing; from tests.support.images import png_bytes; "
              "assert preprocessing._png_decoder() is not None; "
              "assert preprocessing.decode_plain_png(png_bytes(np.eye(28, dtype=np.uint8) * 255)) is not None; "
              "print(sorted({'torchvision', 'torch._dynamo', 'sympy'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
    from torchvision.io.image import ImageReadMode

    assert preprocessing.PNG_UNCHANGED == ImageReadMode.UNCHANGED.value


def test_fast_png_decoder_leaves_everything_else_to_pillow():
    seven = digit_seven(32)
    rgba = np.dstack([seven, seven, seven, seven])
    palette = Image.fromarray(seven).convert("P")
    cases = {
        "alpha": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "palette": encode(palette, "PNG"),
        "16-bit": encode(Image.fromarray(seven.astype(np.uint16) * 257), "PNG"),
        "transparency key": encode(Image.fromarray(seven), "PNG", transparency=0),
        "exif": encode(Image.fromarray(seven), "PNG", exif=_rotated_exif()),
        "text": encode(Image.fromarray(seven), "PNG", pnginfo=_text_chunk()),
        "animation": encode(Image.fromarray(seven), "PNG", save_all=True,
                            append_images=[Image.fromarray(255 - seven)]),
        "truncated": png_bytes(seven)[:-20],
        "bad IHDR CRC": _flip(png_bytes(seven), 29),
        "too small": png_bytes(np.full((4, 40), 255, np.uint8)),
        "too large": png_header_only(5000, 4000),
        "JPEG": encode(Image.fromarray(seven), "JPEG"),
    }
    for name, data in cases.items():
        assert preprocessing.decode_plain_png(data) is None, name


def _rotated_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return exif


def test_exif_orientation_of_a_png_is_honoured():
    seven = digit_seven(32)
    rotated = preprocessing.decode_image(encode(Image.fromarray(seven), "PNG", exif=_rotated_exif()))
    np.testing.assert_array_equal(rotated, np.rot90(seven, -1) / np.float32(255.0))


def _text_chunk():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "a seven")
    return info


def _flip(data: bytes, position: int) -> bytes:
    changed = bytearray(data)
    changed[position] ^= 0xFF
    return bytes(changed)


def test_png_with_gamma_and_srgb_chunks_takes_the_fast_path_with_the_same_pixels():
    import struct
    import zlib

    data = png_bytes(digit_seven(28))
    chunks = b""
    for kind, body in ((b"gAMA", struct.pack(">I", 45455)), (b"sRGB", b"\x00"), (b"pHYs", struct.pack(">IIB", 2835, 2835, 1))):
        chunks += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    data = data[:33] + chunks + data[33:]  # after IHDR
    fast = preprocessing.decode_plain_png(data)
    assert fast is not None
    np.testing.assert_array_equal(fast.astype(np.float32) / 255.0, preprocessing.decode_with_pillow(data))
