"""The one preprocessing module: input geometry, normalisation, decoding and labels.

train.py, the TorchServe handler and the tests all import this file, and the .mar carries it, so a
digit is turned into a tensor the same way when the model learns and when it serves.

The target is MNIST's geometry: a 28x28 grey image, white digit on black, the digit's bounding box
scaled to fit 20x20 (aspect kept) and placed so its centre of mass sits at the centre. Every input
-- an 8x8 scikit-learn scan, a 28x28 MNIST PNG, a photo of a digit drawn in black on white paper,
a screen drawing with a transparent background -- goes through `to_mnist_geometry`.
"""
from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_SIZE = 28  # side of the network's input, pixels
DIGIT_BOX = 20  # MNIST scales each digit's bounding box to fit 20x20 ...
# ... and centres it by centre of mass in the 28x28 frame.
MEAN, STD = 0.1307, 0.3081  # MNIST's pixel mean and std on [0, 1]; both datasets are put in its geometry
NUM_CLASSES = 10
DEFAULT_LABELS = [str(digit) for digit in range(NUM_CLASSES)]

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")  # what Pillow may parse; fewer parsers, less attack surface
MAX_IMAGE_PIXELS = 4096 * 4096  # larger images are refused from their header, before any pixel is decoded
MIN_IMAGE_SIDE = 8  # scikit-learn's scans are 8x8; anything smaller holds no legible digit
MIN_CONTRAST = 8 / 255  # a max-min range below this is a blank image, not a digit
INK_THRESHOLD = 0.1  # a pixel brighter than this (after polarity and background removal) belongs to the digit


MAX_IMAGES_PER_REQUEST = 256  # a multi-image request carries at most this many (more: HTTP 413)
NPY_MAGIC = b"\x93NUMPY"
# .npy dtypes a frame array may have: pixel values 0..255 as integers or floats; never objects (pickles).
NPY_DTYPES = ("|u1", "<u2", ">u2", "<i2", ">i2", "<i4", ">i4", "<i8", ">i8", "<f4", ">f4", "<f8", ">f8")


class InputError(ValueError):
    """A request's input is not a usable digit image. The message says why, for the client."""


class InputTooLarge(InputError):
    """A request carries more than a limit allows (HTTP 413)."""


@dataclass
class ParsedInput:
    """One request, read: its images as network input (N x 1 x 28 x 28), its topk, whether it asked for many
    images (answered as a list) or one, and how the input came ("image", "pixels" or "multi_image", for the
    metrics). Lives here because TorchServe allows one class per handler module."""
    inputs: torch.Tensor
    topk: int
    many: bool = False
    kind: str = ""

    def __post_init__(self):
        self.kind = self.kind or ("multi_image" if self.many else "image")


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes into a float32 grey array in [0, 1], any size, with the digit's ink kept.

    Refuses (InputError) what is not an allowed image format, truncated files, and images over
    MAX_IMAGE_PIXELS (checked from the header, before decoding pixels).
    """
    if not data:
        raise InputError("empty body: POST an image (PNG, JPEG, BMP, GIF, WEBP) or JSON as the request body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # PIL refuses from the header alone when it declares more pixels than PIL's own limit (89M)
        declared = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{declared.group(1)} pixels" if declared else "over PIL's limit"
        raise InputError(f"image too large: {size}, the limit is {MAX_IMAGE_PIXELS} pixels") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"not an image: expected one of {', '.join(ALLOWED_FORMATS)}") from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError, IndexError, TypeError) as error:
        raise InputError(f"unreadable image: {error}") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"image too large: {width}x{height} pixels, the limit is {MAX_IMAGE_PIXELS} pixels")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InputError(f"image too small: {width}x{height} pixels, each side must be at least {MIN_IMAGE_SIDE}")
    try:
        image.seek(0)  # an animated GIF or WEBP: its first frame
        image.load()
        if "exif" in image.info:  # phone photos: honour the orientation tag (the check skips a costly no-op)
            image = ImageOps.exif_transpose(image)
        return image_to_grey(image)
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, struct.error, EOFError, IndexError, TypeError, KeyError) as error:
        raise InputError(f"unreadable image: {error}") from None


def image_to_grey(image: Image.Image) -> np.ndarray:
    """Any decoded Pillow image -> float32 array in [0, 1] (0 black, 1 white), alpha flattened."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        return np.clip(pixels / top, 0.0, 1.0).astype(np.float32)
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float32)
        if not np.isfinite(pixels).all():
            raise InputError("image holds NaN or infinite pixel values")
        top = 255.0 if pixels.max() > 1.0 else 1.0
        return np.clip(pixels / top, 0.0, 1.0).astype(np.float32)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        grey = image if image.mode == "L" else image.convert("L")
        return np.asarray(grey, dtype=np.float32) / np.float32(255.0)
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    grey = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L"
    alpha = rgba[..., 3]
    # A screen drawing often has a transparent background: put its strokes on a background that
    # contrasts with them (dark strokes on white, light strokes on black), so the digit survives.
    opaque = alpha > 0.5
    ink_is_dark = grey[opaque].mean() < 0.5 if opaque.any() else True
    background = 1.0 if ink_is_dark else 0.0
    return (grey * alpha + background * (1.0 - alpha)).astype(np.float32)


def pixels_to_grey(pixels: object) -> np.ndarray:
    """A JSON 28x28 array of pixel values (0..255, white digit on black as in MNIST) -> float32 in [0, 1]."""
    try:
        array = np.asarray(pixels, dtype=np.float64)
    except (ValueError, TypeError):
        raise InputError(
            f"pixel array must be a {IMAGE_SIZE}x{IMAGE_SIZE} array of numbers (0-255)"
        ) from None
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(f"pixel array must be {IMAGE_SIZE}x{IMAGE_SIZE}, got shape {list(array.shape)}")
    if not np.isfinite(array).all():
        raise InputError("pixel array holds NaN or infinite values")
    if array.min() < 0 or array.max() > 255:
        raise InputError(f"pixel values must lie in 0..255, got {array.min():g}..{array.max():g}")
    return (array / 255.0).astype(np.float32)


def border_median(values: np.ndarray) -> float:
    """np.median of a 1-D array, without its generic machinery (a tenth of the time on a 108-pixel border)."""
    count = values.size
    half = count // 2
    if count % 2:
        return float(np.partition(values, half)[half])
    middle = np.partition(values, (half - 1, half))
    return float((middle[half - 1] + middle[half]) / 2)


def to_mnist_geometry(grey: np.ndarray, resolution: int = DIGIT_BOX) -> np.ndarray:
    """Grey image in [0, 1], any size and polarity -> 28x28 float32, white digit on black, MNIST-centred.

    Steps: make the digit white on black (judged from the border), remove the background level and
    stretch the ink to 1, crop to the ink's bounding box, scale its longer side to DIGIT_BOX, and
    paste it so the centre of mass lands in the middle of the frame.
    """
    grey = np.asarray(grey, dtype=np.float32)
    if grey.ndim != 2 or min(grey.shape) < 1:
        raise InputError(f"expected a 2-D grey image, got shape {list(grey.shape)}")
    # Written for speed as well as clarity: this runs once per served image, so whole-array numpy ufuncs and
    # Python arithmetic on scalars (np.clip and np.median cost ~10-40 us each in their generic wrappers).
    low, high = float(grey.min()), float(grey.max())
    if high - low < MIN_CONTRAST:
        raise InputError("blank image: no digit found")
    border = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    background = border_median(border)
    if background > 0.5:  # dark digit on a light background: make it white on black
        grey = 1.0 - grey
        background = 1.0 - background
        high = float(grey.max())
    ink = (grey - background) / max(high - background, 1e-6)
    np.minimum(np.maximum(ink, 0.0, out=ink), 1.0, out=ink)
    is_ink = ink > INK_THRESHOLD
    rows = np.flatnonzero(is_ink.any(axis=1))
    cols = np.flatnonzero(is_ink.any(axis=0))
    if rows.size == 0:
        raise InputError("blank image: no digit found")
    box = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = box.shape
    box = Image.fromarray(box, mode="F")
    if resolution < max(height, width):
        # Rasterise at the resolution the model was trained on (8 for scikit-learn's 8x8 scans), so a
        # sharp 28x28 MNIST digit carries the same detail as a training scan before it is enlarged.
        scale = resolution / max(height, width)
        low_h, low_w = max(1, round(height * scale)), max(1, round(width * scale))
        box = box.resize((low_w, low_h), Image.BILINEAR)
    scale = DIGIT_BOX / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    # Pillow's resize is antialiased when shrinking and smooth when enlarging an 8x8 scan.
    box = np.minimum(np.maximum(np.asarray(box.resize((new_w, new_h), Image.BILINEAR), dtype=np.float32), 0.0), 1.0)
    row_mass, col_mass = box.sum(axis=1, dtype=np.float64), box.sum(axis=0, dtype=np.float64)
    total = float(row_mass.sum())
    if total <= 0.0:
        raise InputError("blank image: no digit found")
    com_y = float(row_mass @ np.arange(new_h)) / total
    com_x = float(col_mass @ np.arange(new_w)) / total
    centre = (IMAGE_SIZE - 1) / 2
    top = min(max(round(centre - com_y), 0), IMAGE_SIZE - new_h)
    left = min(max(round(centre - com_x), 0), IMAGE_SIZE - new_w)
    frame = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    frame[top : top + new_h, left : left + new_w] = box
    return frame


def normalize(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Frames in [0, 1], shape (..., 28, 28) -> the network's input, shape (..., 1, 28, 28).

    One frame (serving) or a batch (training): the same arithmetic for both.
    """
    # numpy does the arithmetic for both (bit-identical results), then one torch call: cheap for one frame.
    frames = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else frames
    frames = np.asarray(frames, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray((frames - np.float32(MEAN)) / np.float32(STD))).unsqueeze(-3)


def image_bytes_to_tensor(data: bytes, resolution: int = DIGIT_BOX) -> torch.Tensor:
    """Image bytes -> 1x28x28 network input: the whole serving path for one image.

    resolution must be the one the model was trained with (recorded in its checkpoint).
    """
    return normalize(to_mnist_geometry(decode_image(data), resolution))


def pixels_to_tensor(pixels: object, resolution: int = DIGIT_BOX) -> torch.Tensor:
    """JSON pixel array -> 1x28x28 network input."""
    return normalize(to_mnist_geometry(pixels_to_grey(pixels), resolution))


def check_image_count(count: int, limit: int = MAX_IMAGES_PER_REQUEST) -> None:
    if count < 1:
        raise InputError("no images in the request")
    if count > limit:
        raise InputTooLarge(f"{count} images in one request; the limit is {limit}")


def decode_npy_frames(data: bytes, limit: int = MAX_IMAGES_PER_REQUEST) -> np.ndarray:
    """A .npy file of N x 28 x 28 pixel values (0..255, white digit on black as in MNIST) -> float32 in [0, 1].

    The header is checked before any pixel is read: shape, count, dtype (numbers only, never pickled objects)
    and that the file holds exactly the bytes the header promises. np.load would allocate the array the
    header declares first, so a 60-byte file could claim terabytes.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except ValueError as error:
        raise InputError(f"not a valid .npy file: {error}") from None
    if dtype.str not in NPY_DTYPES:
        raise InputError(f".npy dtype must be an integer or float type, got {dtype.str}")
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or tuple(shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(f".npy array must have shape N x {IMAGE_SIZE} x {IMAGE_SIZE}, got {list(shape)}")
    check_image_count(shape[0], limit)
    payload = data[stream.tell():]
    expected = shape[0] * IMAGE_SIZE * IMAGE_SIZE * dtype.itemsize
    if len(payload) != expected:
        raise InputError(f".npy holds {len(payload)} bytes of data, its header promises {expected}")
    frames = np.frombuffer(payload, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    if dtype.kind == "f" and not np.isfinite(frames).all():
        raise InputError(".npy frames hold NaN or infinite values")
    low, high = frames.min(), frames.max()
    if low < 0 or high > 255:
        raise InputError(f"pixel values must lie in 0..255, got {low:g}..{high:g}")
    return frames.astype(np.float32) / np.float32(255.0)


def frames_to_tensor(frames: np.ndarray, resolution: int = DIGIT_BOX) -> torch.Tensor:
    """N grey frames in [0, 1] -> N x 1 x 28 x 28 network input; an error names the frame's index."""
    geometric = np.empty((len(frames), IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for index, frame in enumerate(frames):
        try:
            geometric[index] = to_mnist_geometry(frame, resolution)
        except InputError as error:
            raise InputError(f"image {index}: {error}") from None
    return normalize(geometric)


def labels_from_mapping(index_to_name: dict[str, str]) -> list[str]:
    """index_to_name.json's {"0": "zero", ...} -> list of names by class index; rejects gaps."""
    try:
        indices = sorted(int(key) for key in index_to_name)
    except ValueError:
        raise ValueError("index_to_name keys must be class indices") from None
    if indices != list(range(len(indices))):
        raise ValueError(f"index_to_name must cover 0..{len(indices) - 1} without gaps, got {indices}")
    return [str(index_to_name[str(index)]) for index in indices]
