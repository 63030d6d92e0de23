"""The bad-input matrix, shared by the REST and gRPC tests: each body, and the words its 400 names.

The same bytes are sent over both transports; REST answers 400 with a JSON body, gRPC answers status OK with the
same JSON body (TorchServe 0.12.0 drops per-request status codes on gRPC; see docs/grpc-and-oip.md "gRPC").
"""
from __future__ import annotations

import json

import numpy as np

from tests.support.images import encode, png_bytes, png_header_only

NAN_PIXELS = b'{"pixels": [' + b",".join([b"[" + b",".join([b"NaN"] * 28) + b"]"] * 28) + b"]}"

# name -> what the 400's message must contain
REFUSED = {
    "empty body": "empty body: POST an image",
    "random bytes": "not an image",
    "text": "not an image",
    "truncated png": "unreadable",
    "decompression bomb 50000x50000": "image too large: 2500000000 pixels, the limit is 16777216 pixels",
    "5000x5000 png header": "image too large: 5000x5000 pixels, the limit is 16777216 pixels",
    "1x1 image": "image too small: 1x1",
    "json not an object": "must be an object",
    "bad base64": "not valid base64",
    "pixels of the wrong shape": "28x28",
    "pixels with NaN": "NaN",
    "pixels out of range": "0..255",
}


def refused_bodies(scan: np.ndarray) -> dict[str, bytes]:
    """Every refused case as request bytes; `scan` is a real 8-bit digit (the truncated PNG is cut from it)."""
    bodies = {
        "empty body": b"",
        "random bytes": bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)),
        "text": b"the digit seven",
        "truncated png": png_bytes(scan)[:50],
        "decompression bomb 50000x50000": png_header_only(50_000, 50_000),
        "5000x5000 png header": png_header_only(5_000, 5_000),
        "1x1 image": png_bytes(np.full((1, 1), 255, np.uint8)),
        "json not an object": b"[1, 2, 3]",
        "bad base64": json.dumps({"data": "%%%"}).encode(),
        "pixels of the wrong shape": json.dumps({"pixels": [[0] * 28] * 27}).encode(),
        "pixels with NaN": NAN_PIXELS,
        "pixels out of range": json.dumps({"pixels": [[256] * 28] * 28}).encode(),
    }
    assert bodies.keys() == REFUSED.keys()
    return bodies


def accepted_bodies(scan: np.ndarray) -> dict[str, bytes]:
    """One real digit (8-bit, white on black, 8x8 up to 28x28) in the unusual encodings clients send: each must be
    answered, not refused.

    A 4000x4000 image is under the 4096x4096-pixel limit (preprocessing.MAX_IMAGE_PIXELS): accepted and scaled.
    """
    from PIL import Image

    side = scan.shape[0]
    enlarged = np.kron(scan, np.ones((4000 // side,) * 2, np.uint8))
    big = np.pad(enlarged, [(0, 4000 - enlarged.shape[0]), (0, 4000 - enlarged.shape[1])])  # 4000 x 4000 pixels
    small = scan if side >= 28 else np.kron(scan, np.ones((4, 4), np.uint8))  # 28x28 or 32x32
    image = Image.fromarray(small)
    palette = image.convert("P")
    return {
        "4000x4000 png": png_bytes(big),
        "animated gif": encode(palette, "GIF", save_all=True, append_images=[image.point(lambda v: 255 - v).convert("P")],
                               duration=100),
        "16-bit png": encode(Image.fromarray(small.astype(np.uint16) * 257), "PNG"),
        "cmyk jpeg": encode(image.convert("CMYK"), "JPEG", quality=95),
        "palette png with transparency": encode(palette, "PNG", transparency=0),
    }

