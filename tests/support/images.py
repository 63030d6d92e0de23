"""Images as the tests send them: PNG and .npy bodies, other formats, a decompression bomb's header, and
scikit-learn's scans as train.py stores them."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def png_bytes(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def photo_png(pixels: np.ndarray, side: int = 1500, noise: int = 8, seed: int = 0) -> bytes:
    """A digit as a large photo would bring it: `pixels` scaled to side x side, in colour, with sensor-like noise
    (0..`noise` on each channel, well under the ink threshold), so the PNG is large (about 3.3 MB at 1500: noise
    does not compress) and still the same digit."""
    big = np.asarray(Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR))
    rgb = np.repeat(big[:, :, None], 3, axis=2).astype(np.int16)
    rgb += np.random.default_rng(seed).integers(0, noise + 1, rgb.shape, dtype=np.int16)
    return png_bytes(np.clip(rgb, 0, 255).astype(np.uint8))


def npy_bytes(array: np.ndarray) -> bytes:
    """What numpy.save writes for `array` (no pickles): the body of a multi-image request."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but holds no pixel data (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def sklearn_scans_u8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 scans as 8-bit images, exactly as train.py stores them, and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8), digits.target
