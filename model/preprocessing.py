"""The one preprocessing module: input geometry, normalisation, decoding and labels.

train.py, the TorchServe handler and the tests all import this file, and the .mar carries it, so a
digit is turned into a tensor the same way when the model learns and when it serves.

The target is MNIST's geometry: a 28x28 grey image, white digit on black, the digit's bounding box
scaled to fit 20x20 (aspect kept) and placed so its centre of mass sits at the centre. Every input
-- an 8x8 scikit-learn scan, a 28x28 MNIST PNG, a photo of a digit drawn in black on white paper,
a screen drawing with a transparent background -- goes through `to_mnist_geometry_batch`, a whole batch of
images per call (`to_mnist_geometry` for one).
"""
from __future__ import annotations

import functools
import io
import re
import struct
import warnings
import zlib

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
# PNGs that take the fast decoder (libpng through torchvision, 2-4x faster than Pillow, measured on 28x28 to
# 4000x4000): 8-bit grey or RGB, not interlaced, holding only chunks that change no pixel, each of the length its
# type has. Everything else (transparency, EXIF orientation, animation, palettes, 16-bit, interlacing, text,
# unknown or broken chunks, a stream libpng would refuse) goes to Pillow.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST_PNG_CHUNKS = {b"IHDR": 13, b"IDAT": None, b"IEND": 0, b"pHYs": 9, b"gAMA": 4, b"cHRM": 32, b"sRGB": 1,
                   b"tIME": 7}
FAST_PNG_COLOUR_TYPES = {0: 1, 2: 3}  # PNG colour type -> channels: grey, RGB


class ImageError(ValueError):
    """Image bytes or pixels that make no usable digit image. The message says why; `kind`, one of KINDS, says it
    in one word (a server's refusal reason: handler/refusals.py Reason has each kind as a value)."""

    KINDS = ("not_an_image", "unreadable_image", "image_too_large", "image_too_small", "blank_image", "bad_pixels")

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        if kind not in self.KINDS:
            raise ValueError(f"ImageError kind {kind!r} is not one of {self.KINDS}")
        self.kind = kind

    def __reduce__(self):  # copy and pickle: the kind is not in args
        return type(self), (str(self), self.kind)


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes into a float32 grey array in [0, 1], any size, with the digit's ink kept.

    Refuses (ImageError) what is not an allowed image format, truncated files, and images over
    MAX_IMAGE_PIXELS (checked from the header, before decoding pixels).
    """
    grey = decode_grey(data)
    return grey.astype(np.float32) / np.float32(255.0) if grey.dtype == np.uint8 else grey


def decode_grey(data: bytes) -> np.ndarray:
    """decode_image's pixels as they come: uint8 0..255 from the fast PNG decoder (8-bit grey or RGB PNGs: what
    clients send most), else float32 in [0, 1] from Pillow. to_mnist_geometry_batch takes either, so the
    conversion to float runs once per batch. The same refusals as decode_image."""
    grey = decode_plain_png(data)
    return grey if grey is not None else decode_with_pillow(data)


PNG_UNCHANGED = 0  # torchvision.io.ImageReadMode.UNCHANGED: the PNG's own channels (a test compares the two)


@functools.cache
def _png_decoder():
    """torchvision's libpng decoder (its C++ op, without the Python wrapper's per-call deprecation warning), or None
    where torchvision's image extension is missing: then Pillow decodes everything."""
    try:
        decode_png = load_torchvision_image_ops()
    except (ImportError, OSError, AttributeError, RuntimeError):
        return None
    return lambda encoded: decode_png(encoded, PNG_UNCHANGED, False)


def load_torchvision_image_ops():
    """torch.ops.image.decode_png, from torchvision's image extension loaded on its own. Importing torchvision's
    Python package for it would import torch._dynamo and SymPy too (torchvision.ops needs them): 1.5 s of each
    worker's start on 2 cores, for one operator."""
    import importlib.machinery
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("torchvision")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchvision is not installed")
    folder = Path(spec.submodule_search_locations[0])
    for stem in ("image_stable", "image"):  # the extension's name from torchvision 0.29 on, and before
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                torch.ops.load_library(str(folder / f"{stem}{suffix}"))
                return torch.ops.image.decode_png
    raise ImportError(f"no image extension in {folder}")


def plain_png_header(data: bytes) -> tuple[int, int, int, list[slice]] | None:
    """(width, height, channels, where its IDAT chunks' data lie) of a PNG the fast decoder may take: 8-bit grey or
    RGB, not interlaced, within the size limits, whose chunks are IHDR first, IEND last, and in between only IDAT
    and FAST_PNG_CHUNKS, each with its right length and CRC. None for anything else, which Pillow then decodes or
    refuses with its usual message."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    position, size, header, image_data = len(PNG_SIGNATURE), len(data), None, []
    while position + 12 <= size:
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length
        if end > size or kind not in FAST_PNG_CHUNKS or (header is None) != (kind == b"IHDR"):
            return None
        if FAST_PNG_CHUNKS[kind] not in (None, length):
            return None
        if zlib.crc32(memoryview(data)[position + 4 : end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            return None
        if kind == b"IHDR":
            width, height, depth, colour, compression, filtering, interlace = struct.unpack_from(
                ">IIBBBBB", data, position + 8)
            if (depth != 8 or colour not in FAST_PNG_COLOUR_TYPES or compression or filtering or interlace
                    or not MIN_IMAGE_SIDE <= min(width, height) or width * height > MAX_IMAGE_PIXELS):
                return None  # Pillow refuses sizes out of range with the usual messages
            header = (width, height, FAST_PNG_COLOUR_TYPES[colour])
        elif kind == b"IDAT":
            image_data.append(slice(position + 8, end - 4))
        elif kind == b"IEND":
            return (*header, image_data) if end == size and image_data else None
        position = end
    return None


def decode_plain_png(data: bytes) -> np.ndarray | None:
    """An 8-bit grey or RGB PNG (plain_png_header) -> H x W uint8 grey, the very pixels Pillow gives (RGB -> grey
    with Pillow's own integer ITU-R 601 weights); None where this decoder does not apply: Pillow decides.

    libpng (through torchvision) only ever sees a PNG it can decode without an error: after a run of libpng
    errors torchvision's decoder was seen to crash the process (a segmentation fault, under fuzzing). So the
    compressed stream is checked first, in full (zlib, its checksum, the exact number of bytes the rows need, and
    each row's filter type); that costs a fraction of the decode."""
    header = plain_png_header(data)
    decoder = _png_decoder() if header is not None else None
    if decoder is None:
        return None
    width, height, channels, image_data = header
    row_bytes = 1 + width * channels  # a filter-type byte, then the row
    try:
        inflater = zlib.decompressobj()
        rows = inflater.decompress(b"".join(data[part] for part in image_data), height * row_bytes + 1)
    except zlib.error:
        return None
    if len(rows) != height * row_bytes or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        return None
    if max(rows[::row_bytes]) > 4:  # filter types 0-4
        return None
    try:
        pixels = decoder(torch.frombuffer(bytearray(data), dtype=torch.uint8)).numpy()
    except RuntimeError:
        return None
    if pixels.shape != (channels, height, width):
        return None
    if channels == 1:
        return pixels[0]
    red, green, blue = pixels.astype(np.uint32)
    return ((red * 19595 + green * 38470 + blue * 7471 + 0x8000) >> 16).astype(np.uint8)  # Pillow's convert("L")


def decode_with_pillow(data: bytes) -> np.ndarray:
    """Any allowed image -> float32 grey in [0, 1]: every format, mode, alpha, EXIF orientation and animation."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # PIL refuses from the header alone when it declares more pixels than PIL's own limit (89M)
        declared = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{declared.group(1)} pixels" if declared else "over PIL's limit"
        raise ImageError(f"image too large: {size}, the limit is {MAX_IMAGE_PIXELS} pixels",
                         "image_too_large") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"not an image: expected one of {', '.join(ALLOWED_FORMATS)}", "not_an_image") from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError, IndexError, TypeError) as error:
        raise ImageError(f"unreadable image: {error}", "unreadable_image") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"image too large: {width}x{height} pixels, the limit is {MAX_IMAGE_PIXELS} pixels",
                         "image_too_large")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageError(f"image too small: {width}x{height} pixels, each side must be at least {MIN_IMAGE_SIDE}",
                         "image_too_small")
    try:
        image.seek(0)  # an animated GIF or WEBP: its first frame
        image.load()
        if "exif" in image.info:  # phone photos: honour the orientation tag (the check skips a costly no-op)
            image = ImageOps.exif_transpose(image)
        return image_to_grey(image)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, struct.error, EOFError, IndexError, TypeError, KeyError) as error:
        raise ImageError(f"unreadable image: {error}", "unreadable_image") from None


def image_to_grey(image: Image.Image) -> np.ndarray:
    """Any decoded Pillow image -> float32 array in [0, 1] (0 black, 1 white), alpha flattened."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        return np.clip(pixels / top, 0.0, 1.0).astype(np.float32)
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float32)
        if not np.isfinite(pixels).all():
            raise ImageError("image holds NaN or infinite pixel values", "bad_pixels")
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


def to_mnist_geometry(grey: np.ndarray, resolution: int = DIGIT_BOX) -> np.ndarray:
    """One grey image -> its 28x28 float32 frame (to_mnist_geometry_batch of one); ImageError if it is refused."""
    frames, errors = to_mnist_geometry_batch([np.asarray(grey)], resolution)
    if errors[0] is not None:
        raise errors[0]
    return frames[0].cpu().numpy()


def to_mnist_geometry_batch(greys, resolution: int = DIGIT_BOX,
                            device: torch.device | str | None = None) -> tuple[torch.Tensor, list[ImageError | None]]:
    """Grey images, any sizes and polarity -> N x 28 x 28 float32 frames on `device`, white digit on black,
    MNIST-centred; and per image None, or the ImageError that refuses it (blank, not 2-D; its frame is zeros).

    `greys`: a sequence of 2-D arrays or tensors, uint8 (0..255) or float (0..1), or one N x H x W array. Images
    of one size are processed together as one batch of tensor operations (the common case, all 28x28, is one
    group), so no image is padded to another's size. Steps, per image: make the digit white on black (judged from
    the border's median), remove the background level and stretch the ink to 1, crop to the ink's bounding box,
    rasterise it at `resolution` if it is larger (the resolution the model was trained at), scale its longer side
    to DIGIT_BOX, and shift it by whole pixels so its centre of mass lands in the middle of the frame.
    Runs where `device` says (a GPU worker preprocesses on its GPU); train.py calls it too.
    """
    device = torch.device(device if device is not None else "cpu")
    if len(greys) == 1 and device.type == "cpu" and isinstance(greys[0], np.ndarray) and greys[0].ndim == 2 \
            and min(greys[0].shape) >= 1:  # a lone image (a request alone in its batch): the per-image path
        frame, blank = _geometry_of_image(_as_unit_float(greys[0], device), resolution)
        return torch.from_numpy(frame[None]), [_blank_image() if blank else None]
    errors: list[ImageError | None] = [None] * len(greys)
    frames = torch.zeros((len(greys), IMAGE_SIZE, IMAGE_SIZE), dtype=torch.float32, device=device)
    for indices, group in _same_size_groups(greys, errors):
        # On the CPU the work runs in numpy (see _geometry_of_group), elsewhere in torch on the device.
        group_frames, blank = _geometry_of_group(_as_unit_float(group, device), resolution)
        for position in np.flatnonzero(blank).tolist():
            errors[indices[position]] = _blank_image()
        group_frames = torch.as_tensor(group_frames, device=device)
        if len(indices) == len(greys):  # the common case: one size for all
            return group_frames, errors
        frames[torch.tensor(indices, device=device)] = group_frames
    return frames, errors


def _blank_image() -> ImageError:
    return ImageError("blank image: no digit found", "blank_image")


def _as_unit_float(group, device: torch.device):
    """A stacked group -> float32 in [0, 1]: a numpy array for the CPU, a torch tensor on any other device."""
    if device.type == "cpu":
        pixels = group.cpu().numpy() if isinstance(group, torch.Tensor) else group
        return pixels.astype(np.float32) / np.float32(255.0) if pixels.dtype == np.uint8 else pixels.astype(np.float32)
    pixels = torch.as_tensor(group).to(device)
    return pixels.to(torch.float32) / 255.0 if pixels.dtype == torch.uint8 else pixels.to(torch.float32)


def _same_size_groups(greys, errors: list):
    """(indices, N x H x W array) per image size and pixel type (a numpy array if every image of the group is one,
    else a tensor); an image that is not 2-D gets its error instead."""
    if isinstance(greys, (np.ndarray, torch.Tensor)) and greys.ndim == 3 and min(greys.shape[1:]) >= 1:
        if len(greys):
            yield list(range(len(greys))), greys
        return
    groups: dict[tuple, list[int]] = {}
    for index, grey in enumerate(greys):
        if grey.ndim != 2 or min(grey.shape) < 1:
            errors[index] = ImageError(f"expected a 2-D grey image, got shape {list(grey.shape)}",
                                       "unreadable_image")
            continue
        # (dtype == uint8, not str(dtype): numpy's dtype names cost ~7 us an image, a third of a .npy frame's time)
        is_uint8 = grey.dtype == (np.uint8 if isinstance(grey, np.ndarray) else torch.uint8)
        groups.setdefault((grey.shape, is_uint8), []).append(index)
    for (_, is_uint8), indices in groups.items():
        members = [greys[index] for index in indices]
        if all(isinstance(member, np.ndarray) for member in members):
            stacked = np.stack(members)
            yield indices, stacked if is_uint8 else stacked.astype(np.float32, copy=False)
        else:
            yield indices, torch.stack([torch.as_tensor(member) if is_uint8 else torch.as_tensor(member).float()
                                        for member in members])


def _resize_weights(start: np.ndarray, size: np.ndarray, out_size: np.ndarray, out_count: int,
                    length: int) -> np.ndarray:
    """Per image, a matrix (out_count x length) that resizes the `size` pixels from `start` (along one axis of
    `length` pixels) to `out_size` pixels, as Pillow's BILINEAR resize of that crop does: a triangle filter
    widened by the shrink factor (antialiased when shrinking, plain bilinear when enlarging), weights summing to
    1 over the crop's pixels only. Rows from out_size on are zeros. start, size, out_size: one float per image.
    """
    scale = size / out_size
    support = np.maximum(scale, 1.0)
    centres = start[:, None] + (np.arange(out_count) + 0.5) * scale[:, None]
    pixels = np.arange(length)
    weights = np.maximum(1.0 - np.abs(pixels + 0.5 - centres[:, :, None]) / support[:, None, None], 0.0)
    in_crop = (pixels >= start[:, None]) & (pixels < (start + size)[:, None])
    weights *= in_crop[:, None, :] & (np.arange(out_count) < out_size[:, None])[:, :, None]
    return (weights / np.maximum(weights.sum(axis=2, keepdims=True), 1e-12)).astype(np.float32)


def _axis_weights(start: int, size: int, low_size: int, out_size: int, length: int) -> np.ndarray:
    """DIGIT_BOX x length: the `size` pixels from `start` of one axis, resized to `low_size` pixels (the training
    resolution; skipped when it equals `size`) and then to `out_size` (<= DIGIT_BOX; the rows below are zeros).
    Cached for small images (_small_axis_weights): 28x28 inputs take a few hundred distinct values."""
    start_, size_, low_, out_ = (np.array([value], dtype=np.float64) for value in (start, size, low_size, out_size))
    if low_size == size:
        return _resize_weights(start_, size_, out_, DIGIT_BOX, length)[0]
    return _resize_weights(np.zeros(1), low_, out_, DIGIT_BOX, low_size)[0] @ _resize_weights(
        start_, size_, low_, low_size, length)[0]


_small_axis_weights = functools.lru_cache(maxsize=4096)(_axis_weights)  # at most 4096 x 20 x 64 floats, 20 MiB
SMALL_AXIS = 64  # image sides up to this many pixels use the cache


@functools.cache
def _border_index(height: int, width: int) -> np.ndarray:
    """Flat indices of an H x W image's border pixels: first row, last row, then the first and last columns."""
    index = np.arange(height * width).reshape(height, width)
    return np.concatenate((index[0], index[-1], index[1:-1, 0], index[1:-1, -1]))


def _ink_extent(present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of flags (images x pixels along one axis) -> index of the first and of the last flagged pixel (0 if
    none)."""
    last = present.shape[1] - 1 - present[:, ::-1].argmax(axis=1)
    return present.argmax(axis=1), np.where(present.any(axis=1), last, 0)


def _geometry_of_group(grey, resolution: int) -> tuple[np.ndarray | torch.Tensor, np.ndarray]:
    """A group of same-size images, N x H x W grey in [0, 1] -> N x 28 x 28 frames and which images are blank (see
    to_mnist_geometry_batch).

    `grey` is a numpy array (the CPU: numpy's calls cost a fraction of torch's on small arrays, and this runs at
    batch 1 too) or a torch tensor on any device; the pixels are worked on where they lie, in a few batched
    operations written once for both (operators, and `xp` for the functions). The crop and both resizes are one
    matrix per image and axis (Pillow resizes rows and columns separately too), applied as two batched matrix
    products, and the centring shift is two more with one-hot matrices. The few numbers per image that shape
    those matrices (background, box, sizes, shift) are worked out on the host, from three small transfers.
    """
    count, height, width = grey.shape
    if isinstance(grey, np.ndarray):
        xp, to_host, to_array = np, np.asarray, np.asarray
    else:
        xp, to_host = torch, lambda tensor: tensor.cpu().numpy()
        to_array = functools.partial(torch.as_tensor, device=grey.device)
    flat = grey.reshape(count, -1)
    # Polarity from the border: its median is the background; a light background means a dark digit.
    stats = to_host(xp.concatenate((xp.amin(flat, axis=1)[:, None], xp.amax(flat, axis=1)[:, None],
                                    flat[:, to_array(_border_index(height, width))]), axis=1))
    low, high, border = stats[:, 0], stats[:, 1], np.sort(stats[:, 2:], axis=1)
    middle = border.shape[1] // 2
    background = (border[:, middle - 1 + border.shape[1] % 2] + border[:, middle]) / np.float32(2)  # the median
    blank = high - low < MIN_CONTRAST
    inverted = background > 0.5
    # Background to 0, brightest ink to 1: (grey - background) / (high - background), or for an inverted image
    # ((1 - grey) - (1 - background)) / ((1 - low) - (1 - background)).
    factor = np.where(inverted, -1.0, 1.0) / np.maximum(np.where(inverted, background - low, high - background), 1e-6)
    factor, offset = factor.astype(np.float32)[:, None, None], (-background * factor).astype(np.float32)[:, None, None]
    ink = (grey * to_array(factor) + to_array(offset)).clip(0.0, 1.0)
    # The ink's bounding box: the first and last row with ink, and column.
    is_ink = ink > INK_THRESHOLD
    if height == width:  # 2N x side: rows with ink, then columns with ink
        present = to_host(xp.concatenate((is_ink.any(axis=2), is_ink.any(axis=1))))
    else:
        present = np.zeros((2 * count, max(height, width)), dtype=bool)
        present[:count, :height], present[count:, :width] = to_host(is_ink.any(axis=2)), to_host(is_ink.any(axis=1))
    blank |= ~present[:count].any(axis=1)
    first, last = _ink_extent(present)
    size = last + 1 - first
    side = np.maximum(size[:count], size[count:])
    side = np.concatenate((side, side))
    out_size = np.maximum(np.round(size * (DIGIT_BOX / side)), 1).astype(np.int64)  # the box scaled to fit DIGIT_BOX
    # Rasterised at the resolution the model was trained on (8 for scikit-learn's 8x8 scans) when larger, so a
    # sharp 28x28 MNIST digit carries the same detail as a training scan before it is enlarged.
    low_size = np.where(side > resolution, np.maximum(np.round(size * (resolution / side)), 1), size).astype(np.int64)
    length = present.shape[1]
    axis_weights = _small_axis_weights if length <= SMALL_AXIS else _axis_weights
    weights = to_array(np.stack([axis_weights(*key, length) for key in zip(
        first.tolist(), size.tolist(), low_size.tolist(), out_size.tolist())]))
    box = weights[:count, :, :height] @ ink @ weights[count:, :, :width].swapaxes(1, 2)  # N x 20 x 20, top-left
    # Whole-pixel shift putting the box's centre of mass at the centre; the box stays inside the frame.
    mass = to_host(xp.concatenate((box.sum(axis=2), box.sum(axis=1)))).astype(np.float64)  # rows', then columns'
    total = mass.sum(axis=1)
    blank |= total[:count] <= 0.0
    centre_of_mass = (mass @ np.arange(DIGIT_BOX)) / np.maximum(total, 1e-12)
    shift = np.minimum(np.maximum(np.round((IMAGE_SIZE - 1) / 2 - centre_of_mass), 0), IMAGE_SIZE - out_size)
    place = np.arange(IMAGE_SIZE)[None, :, None] - shift[:, None, None] == np.arange(DIGIT_BOX)[None, None, :]
    place = to_array(place.astype(np.float32))  # 2N x 28 x 20 one-hot: frame row (column) <- box row (column)
    frames = (place[:count] @ box @ place[count:].swapaxes(1, 2)).clip(0.0, 1.0)
    if blank.any():
        frames[to_array(blank)] = 0.0
    return frames, blank


def _geometry_of_image(grey: np.ndarray, resolution: int) -> tuple[np.ndarray, bool]:
    """One H x W grey image in [0, 1] (numpy) -> its 28 x 28 frame and whether it is blank: _geometry_of_group's
    arithmetic for a batch of one, written for one image. The batched code's ~60 numpy calls on N x ... arrays cost
    a 28x28 image ~270 us here; these ~35 on 2-D arrays ~115 us (docs/performance.md, "Preprocessing"). Same steps, same
    cached resize matrices (the same `length`), same float32 products; the centring places the box by slicing where
    the batched code multiplies by one-hot matrices (exact either way), so the frames are equal
    (tests/model/test_preprocessing.py checks this on real digits and odd images)."""
    height, width = grey.shape
    low, high = grey.min(), grey.max()
    if high - low < MIN_CONTRAST:
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32), True
    border = np.sort(grey.ravel()[_border_index(height, width)])
    middle = len(border) // 2
    background = (border[middle - 1 + len(border) % 2] + border[middle]) / np.float32(2)  # the median
    inverted = background > 0.5
    scale = np.maximum(background - low if inverted else high - background, np.float32(1e-6))
    factor = np.float64(-1.0 if inverted else 1.0) / np.float64(scale)  # in float64 as the batched code, then float32
    factor, offset = np.float32(factor), np.float32(-np.float64(background) * factor)
    ink = (grey * factor + offset).clip(0.0, 1.0)
    is_ink = ink > INK_THRESHOLD
    length = max(height, width)
    present = np.zeros((2, length), dtype=bool)
    present[0, :height], present[1, :width] = is_ink.any(axis=1), is_ink.any(axis=0)
    if not present[0].any():
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32), True
    first, last = _ink_extent(present)
    size = last + 1 - first
    side = max(size[0], size[1])
    out_size = np.maximum(np.round(size * (DIGIT_BOX / side)), 1).astype(np.int64)
    low_size = (np.maximum(np.round(size * (resolution / side)), 1) if side > resolution else size).astype(np.int64)
    axis_weights = _small_axis_weights if length <= SMALL_AXIS else _axis_weights
    rows, columns = (axis_weights(*key, length) for key in zip(
        first.tolist(), size.tolist(), low_size.tolist(), out_size.tolist()))
    box = rows[:, :height] @ ink @ columns[:, :width].T  # 20 x 20, the digit top-left
    mass = np.stack((box.sum(axis=1), box.sum(axis=0))).astype(np.float64)
    total = mass.sum(axis=1)
    if total[0] <= 0.0:
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32), True
    centre_of_mass = (mass @ np.arange(DIGIT_BOX)) / np.maximum(total, 1e-12)
    top, left = np.minimum(np.maximum(np.round((IMAGE_SIZE - 1) / 2 - centre_of_mass), 0),
                           IMAGE_SIZE - out_size).astype(np.int64).tolist()
    frame = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    frame[top:top + DIGIT_BOX, left:left + DIGIT_BOX] = box[:IMAGE_SIZE - top, :IMAGE_SIZE - left]
    return frame.clip(0.0, 1.0), False


def normalize(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Frames in [0, 1], shape (..., 28, 28) -> the network's input, shape (..., 1, 28, 28), on the frames' device.

    One frame or a batch, serving or training: the same arithmetic for both.
    """
    frames = torch.as_tensor(frames, dtype=torch.float32)
    return ((frames - MEAN) / STD).unsqueeze(-3)


def image_bytes_to_tensor(data: bytes, resolution: int = DIGIT_BOX) -> torch.Tensor:
    """Image bytes -> 1x28x28 network input: the whole serving path for one image.

    resolution must be the one the model was trained with (recorded in its checkpoint).
    """
    return normalize(to_mnist_geometry(decode_grey(data), resolution))


def labels_from_mapping(index_to_name: dict[str, str]) -> list[str]:
    """index_to_name.json's {"0": "zero", ...} -> list of names by class index; rejects gaps."""
    try:
        indices = sorted(int(key) for key in index_to_name)
    except ValueError:
        raise ValueError("index_to_name keys must be class indices") from None
    if indices != list(range(len(indices))):
        raise ValueError(f"index_to_name must cover 0..{len(indices) - 1} without gaps, got {indices}")
    return [str(index_to_name[str(index)]) for index in indices]
