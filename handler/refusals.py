"""Why a request is refused, and what a refusal gets: the reasons, the errors, the limits, one validator per fault and
the one table from a refusal to its statuses and bodies.

Every reader of a request format (handler/wire.py, handler/open_inference.py) refuses a fault by calling the one
validator for it here, so the same bad input gets the same reason, status and words whichever format carried it:
NaN pixels are refused alike in JSON pixels, a .npy and a v2 tensor, bad base64 alike in JSON "data", "images" and a
v2 BYTES element. Any server's adapter answers a refusal from `refusal(error)`: HTTP status, gRPC status, the error
bodies of TorchServe's API and of the Open Inference Protocol.
"""
from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass

import numpy as np

from model import preprocessing

MAX_IMAGES_PER_REQUEST = 256  # a multi-image request carries at most this many (more: HTTP 413)
MAX_EXPLAINED_IMAGES = 16  # an explanation costs ~32 forward+backward passes per image; more are refused (413)
INTERNAL_REASON = "internal"  # the Reason label of a request refused by a bug (500); InputErrors carry their own


class Reason(enum.StrEnum):
    """Why a request was refused, one of a fixed few: the Reason label of the handler's digits_refusals_total metric
    (alerts and the dashboard match on these values). Every InputError is raised with one, so rewording a message
    never relabels the metric. The image reasons are model/preprocessing.py's ImageError kinds, by value."""

    EMPTY_BODY = "empty_body"  # nothing to read: an empty body, no form field, no images in a list or tensor
    NOT_AN_IMAGE = "not_an_image"  # bytes of no allowed image format, or a text body that is not JSON either
    UNREADABLE_IMAGE = "unreadable_image"  # an image format whose bytes do not decode (truncated, corrupt)
    IMAGE_TOO_LARGE = "image_too_large"  # more than preprocessing.MAX_IMAGE_PIXELS
    IMAGE_TOO_SMALL = "image_too_small"  # a side under preprocessing.MIN_IMAGE_SIDE
    BLANK_IMAGE = "blank_image"  # decoded, but no digit in it
    BAD_BASE64 = "bad_base64"  # an encoded image that is not a base64 string (JSON "data", "images", v2 BYTES)
    BAD_JSON = "bad_json"  # JSON that does not parse, or not in the shape this API takes
    BAD_PIXELS = "bad_pixels"  # pixels that are not numbers, out of range (0..255, finite) or of the wrong shape
    BAD_NPY = "bad_npy"  # a .npy file that is broken: header, dtype, or not the bytes its header promises
    BAD_TOPK = "bad_topk"
    TOO_MANY_IMAGES = "too_many_images"  # over a limit on images per request (InputTooLarge, HTTP 413)
    BAD_REQUEST = "bad_request"  # anything else: a stray form field, an Open Inference Protocol request's fields


class InputError(ValueError):
    """A request's input is not a usable digit image. The message says why, for the client; the reason says it for
    the metrics."""

    def __init__(self, message: str, reason: Reason):
        super().__init__(message)
        self.reason = Reason(reason)  # a value outside the fixed set fails here, where it is raised

    def __reduce__(self):  # copy and pickle: the reason is not in args
        return type(self), (str(self), self.reason)

    def in_image(self, index: int) -> InputError:
        """This refusal of one image of a multi-image request: the message names the image, the reason is kept."""
        return type(self)(f"image {index}: {self}", self.reason)

    @classmethod
    def of_image(cls, error: preprocessing.ImageError) -> InputError:
        """An image the preprocessing refused, as a request's refusal: its words, its kind as the reason."""
        return cls(str(error), Reason(error.kind))


class InputTooLarge(InputError):
    """A request carries more than a limit allows (HTTP 413)."""


# ---------------------------------------------------------------- the one table


@dataclass(frozen=True)
class Refusal:
    """How one refused request is answered, whatever the server: its statuses, its words, its metric labels."""

    status: int  # HTTP
    phrase: str  # HTTP reason phrase
    grpc_code: str  # grpc.StatusCode's name, for a server that sets gRPC statuses per request
    error_type: str  # TorchServe's error body's "type", the ErrorType metric label
    message: str
    reason: str  # the Reason metric label

    def torchserve_body(self) -> dict:
        """The error body of TorchServe's own API (the shape TorchServe uses for its own errors)."""
        return {"code": self.status, "type": self.error_type, "message": self.message}

    def v2_body(self) -> dict:
        """The Open Inference Protocol's REST error body."""
        return {"error": self.message}


# Refusal class -> HTTP status, phrase, gRPC status, error type. The most specific class first. A request too large
# is INVALID_ARGUMENT over gRPC, not RESOURCE_EXHAUSTED: resending it cannot succeed, and clients retry the latter.
STATUSES = (
    (InputTooLarge, 413, "Payload Too Large", "INVALID_ARGUMENT", "InputTooLarge"),
    (InputError, 400, "Bad Request", "INVALID_ARGUMENT", "InputError"),
)
INTERNAL = (500, "Internal Server Error", "INTERNAL", "InternalError")
INTERNAL_MESSAGE = "internal error while reading the input"  # a bug's refusal gives nothing of it away


def refusal(error: Exception) -> Refusal:
    """A refused request's answer: 413 for a limit, 400 for bad input, 500 for anything else (a bug)."""
    for kind, status, phrase, grpc_code, error_type in STATUSES:
        if isinstance(error, kind):
            return Refusal(status, phrase, grpc_code, error_type, str(error), error.reason.value)
    return Refusal(*INTERNAL, INTERNAL_MESSAGE, INTERNAL_REASON)


# ---------------------------------------------------------------- one validator per fault


def check_image_count(count: int, limit: int = MAX_IMAGES_PER_REQUEST) -> None:
    if count < 1:
        raise InputError("no images in the request", Reason.EMPTY_BODY)
    if count > limit:
        raise InputTooLarge(f"{count} images in one request; the limit is {limit}", Reason.TOO_MANY_IMAGES)


def check_explained_count(count: int, limit: int = MAX_EXPLAINED_IMAGES) -> None:
    if count > limit:
        raise InputTooLarge(f"{count} images to explain in one request; the limit is {limit}", Reason.TOO_MANY_IMAGES)


def parse_topk(value: object, num_classes: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= num_classes:
        raise InputError(f"topk must be an integer from 1 to {num_classes}, got {value!r}", Reason.BAD_TOPK)
    return value


def decode_base64(text: object, field: str | None = '"data"') -> bytes:
    """An encoded image as base64 text (a browser's data: URL too: canvas.toDataURL()) -> its bytes. `field` names
    it in the message (None: an image of several, whose index the message gets from decode_each)."""
    if not isinstance(text, str):
        kind = type(text).__name__
        raise InputError(f"{field} must be a base64 string, got {kind}" if field else f"not a base64 string: got {kind}",
                         Reason.BAD_BASE64)
    if text.startswith("data:"):  # data:image/png;base64,....
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{field} is not valid base64" if field else "not valid base64", Reason.BAD_BASE64) from None


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes -> grey pixels (preprocessing.decode_grey), or the refusal of the image."""
    if not data:
        raise InputError("empty body: POST an image (PNG, JPEG, BMP, GIF, WEBP) or JSON as the request body",
                         Reason.EMPTY_BODY)
    try:
        return preprocessing.decode_grey(data)
    except preprocessing.ImageError as error:
        raise InputError.of_image(error) from None


def decode_each(items: list, decode) -> list[np.ndarray]:
    """decode(item) for each item of a multi-image request; an error names the image's index."""
    greys = []
    for index, item in enumerate(items):
        try:
            greys.append(decode(item))
        except InputError as error:
            raise error.in_image(index) from None
    return greys


NOT_NUMBERS = "pixels must be an array of numbers 0-255"


def flatten(data: object) -> list:
    """A JSON array, flat or nested (row-major), as one flat list; anything but an array is refused."""
    if not isinstance(data, list):
        raise InputError(f'"data" must be a list, got {type(data).__name__}', Reason.BAD_REQUEST)
    if data and isinstance(data[0], list):
        flat: list = []
        stack = [iter(data)]
        while stack:
            for item in stack[-1]:
                if isinstance(item, list):
                    stack.append(iter(item))
                    break
                flat.append(item)
            else:
                stack.pop()
        return flat
    return data


def pixel_array(data: object) -> np.ndarray:
    """Pixel values as JSON numbers, a (nested) list -> a float64 array of its shape. Booleans, strings and nulls
    are not pixels, nor is a ragged array."""
    if not isinstance(data, list) or any(isinstance(value, (bool, str)) or value is None for value in flatten(data)):
        raise InputError(NOT_NUMBERS, Reason.BAD_PIXELS)
    try:
        return np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON integer no float holds (10**400)
        raise InputError(NOT_NUMBERS, Reason.BAD_PIXELS) from None


def check_pixel_range(array: np.ndarray) -> None:
    """Pixel values must be finite and lie in 0..255 (white digit on black, as MNIST stores them)."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError("pixels hold NaN or infinite values", Reason.BAD_PIXELS)
    if array.size:
        low, high = array.min(), array.max()
        if low < 0 or high > 255:
            raise InputError(f"pixel values must lie in 0..255, got {low:g}..{high:g}", Reason.BAD_PIXELS)


def frame_count(shape: list[int] | tuple[int, ...]) -> int:
    """How many 28x28 frames pixels of `shape` hold: [28, 28] one, [N, 28, 28] or [N, 1, 28, 28] N."""
    size = preprocessing.IMAGE_SIZE
    shape = list(shape)
    if not all(isinstance(side, int) and not isinstance(side, bool) for side in shape):  # True == 1, yet no size
        raise InputError(f"pixel frames must be N x {size} x {size}, got shape {shape}", Reason.BAD_PIXELS)
    if shape == [size, size]:
        return 1
    if (len(shape) == 3 and shape[1:] == [size, size]) or (len(shape) == 4 and shape[1:] == [1, size, size]):
        return shape[0]
    raise InputError(f"pixel frames must be N x {size} x {size}, got shape {shape}", Reason.BAD_PIXELS)


def check_one_frame(shape: tuple[int, ...]) -> None:
    size = preprocessing.IMAGE_SIZE
    if tuple(shape) != (size, size):
        raise InputError(f"pixel array must be {size}x{size}, got shape {list(shape)}", Reason.BAD_PIXELS)
