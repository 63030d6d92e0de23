"""Why a request is refused and what the refusal gets (handler/refusals.py): the fixed set of reasons, the typed
errors, the one table from a refusal to its statuses and bodies, and one validator per fault."""
import ast
import base64
import copy
import pickle

import grpc
import numpy as np
import pytest

from handler import predictor, refusals
from handler.refusals import InputError, InputTooLarge, Reason
from model import preprocessing
from model.preprocessing import ImageError
from tests.support import ROOT
from tests.support.images import png_bytes, png_header_only
from tests.support.metric_labels import LABEL_VALUES

# Where requests are refused: every InputError of the bundle is raised in these files.
RAISING_FILES = ("handler/refusals.py", "handler/wire.py", "handler/open_inference.py", "handler/predictor.py")
# Where an image is refused: an ImageError, raised with a kind (one of ImageError.KINDS, each a Reason value).
IMAGE_FILES = ("model/preprocessing.py",)

STROKE = np.zeros((28, 28), np.uint8)
STROKE[6:22, 12:16] = 255  # a "1"
BLANK = np.zeros((28, 28), np.uint8)


# ---------------------------------------------------------------- the reasons


def test_the_labels_are_the_fixed_set_the_alerts_and_dashboard_know():
    assert {reason.value for reason in Reason} | {refusals.INTERNAL_REASON} == LABEL_VALUES["Reason"]


def test_every_image_error_kind_is_a_reason_and_becomes_that_reason():
    assert set(ImageError.KINDS) <= {reason.value for reason in Reason}
    for kind in ImageError.KINDS:
        error = InputError.of_image(ImageError(f"words for {kind}", kind))
        assert error.reason is Reason(kind) and str(error) == f"words for {kind}"
        assert refusals.refusal(error).reason == kind


@pytest.mark.parametrize("reason", list(Reason))
def test_the_label_is_the_raised_reason_whatever_the_message_says(reason):
    labels = {refusals.refusal(InputError(message, reason)).reason
              for message in ("blank image: no digit found", "not an image", "topk", "", "reworded entirely")}
    assert labels == {reason.value}
    error = InputError("something", reason)
    assert refusals.refusal(error.in_image(4)).reason == reason.value  # a multi-image request's refusal
    assert str(error.in_image(4)) == "image 4: something"
    for twin in (copy.copy(error), pickle.loads(pickle.dumps(error))):
        assert type(twin) is InputError and twin.reason is reason and str(twin) == "something"
    refused = refusals.refusal(error)
    assert (refused.status, refused.error_type, refused.reason) == (400, "InputError", reason.value)


def test_a_refusal_for_a_limit_keeps_its_type_through_copies_and_images():
    error = InputTooLarge("300 images in one request", Reason.TOO_MANY_IMAGES)
    for twin in (copy.copy(error), copy.deepcopy(error), pickle.loads(pickle.dumps(error)), error.in_image(2)):
        assert type(twin) is InputTooLarge and twin.reason is Reason.TOO_MANY_IMAGES
    assert str(error.in_image(2)) == "image 2: 300 images in one request"


def test_refusal_reasons_of_multi_image_requests_and_limits():
    blank = InputError("blank image: no digit found", Reason.BLANK_IMAGE)
    assert refusals.refusal(blank.in_image(0).in_image(3)).reason == "blank_image"
    assert str(blank.in_image(0).in_image(3)) == "image 3: image 0: blank image: no digit found"
    too_many = InputTooLarge("300 images in one request", Reason.TOO_MANY_IMAGES)
    assert refusals.refusal(too_many).reason == "too_many_images"
    assert refusals.refusal(RuntimeError("bug")).reason == "internal"


def test_a_reason_outside_the_fixed_set_fails_where_it_is_raised():
    with pytest.raises(ValueError, match="not_a_reason"):
        InputError("message", "not_a_reason")
    with pytest.raises(TypeError):
        InputError("a message without a reason")
    with pytest.raises(ValueError, match="not_a_kind"):
        ImageError("message", "not_a_kind")
    with pytest.raises(ValueError):
        ImageError("a reason that is no image kind", "bad_topk")


def test_an_image_error_keeps_its_kind_through_copies():
    error = ImageError("blank image: no digit found", "blank_image")
    for twin in (copy.copy(error), pickle.loads(pickle.dumps(error))):
        assert type(twin) is ImageError and twin.kind == "blank_image" and str(twin) == str(error)


def test_refusals_of_decoded_images_keep_their_reasons():
    """The image kinds preprocessing gives (blank) become the requests' reasons; a multi-image request's names its
    image."""
    requests = [predictor.Request([BLANK], 3), predictor.Request([STROKE, BLANK], 3, many=True),
                predictor.Request([STROKE], 3)]
    _, refused = predictor.preprocess(requests, 20)
    assert [refusal.reason if refusal else None for refusal in refused] == [Reason.BLANK_IMAGE, Reason.BLANK_IMAGE,
                                                                            None]
    assert [str(refusal) if refusal else None for refusal in refused] == [
        "blank image: no digit found", "image 1: blank image: no digit found", None]


# ---------------------------------------------------------------- the raise sites, read from the source


def reason_of(call: ast.Call) -> ast.expr | None:
    if len(call.args) == 2:
        return call.args[1]
    return next((keyword.value for keyword in call.keywords if keyword.arg in ("reason", "kind")), None)


def branches(expr: ast.expr | None) -> list[ast.expr | None]:
    """The values an argument may take: both of `a if test else b`, else the argument itself."""
    if isinstance(expr, ast.IfExp):
        return branches(expr.body) + branches(expr.orelse)
    return [expr]


def calls_named(path: str, names: tuple[str, ...]) -> list[ast.Call]:
    calls = []
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in names:
                calls.append(node)
    return calls


def test_every_raise_site_names_a_reason_from_the_fixed_set():
    """Each InputError or InputTooLarge built in the bundle gets Reason.<member>: the label is typed where the
    request is refused, never read from its words. (A refusal re-raised for one image of many keeps its error's
    reason: InputError.in_image; an image's refusal takes its kind: InputError.of_image.)"""
    sites = []
    for path in RAISING_FILES:
        for call in calls_named(path, ("InputError", "InputTooLarge")):
            where = f"{path}:{call.lineno}"
            for reason in branches(reason_of(call)):
                assert isinstance(reason, ast.Attribute) and isinstance(reason.value, ast.Name), f"{where}: no reason"
                assert reason.value.id == "Reason", f"{where}: the reason is not Reason.<member>"
                assert reason.attr in Reason.__members__, f"{where}: Reason.{reason.attr} is not a Reason"
            sites.append(where)
    assert len(sites) > 40, sites  # the scan sees the raise sites (there were 48 when this test was written)


def test_no_other_file_of_the_bundle_builds_an_input_error():
    """RAISING_FILES is the whole list: the scan above would miss a refusal raised anywhere else."""
    elsewhere = [str(path.relative_to(ROOT)) for folder in ("handler", "model") for path in (ROOT / folder).glob("*.py")
                 if str(path.relative_to(ROOT)) not in RAISING_FILES
                 and calls_named(str(path.relative_to(ROOT)), ("InputError", "InputTooLarge"))]
    assert elsewhere == []
    assert not [path for path in ("handler/wire.py", "handler/open_inference.py", "handler/predictor.py",
                                  "handler/answers.py", "handler/digit_handler.py")
                if calls_named(path, ("ImageError",))]  # images are refused in preprocessing alone


def test_every_image_refusal_names_a_kind_of_the_fixed_set():
    """Each ImageError built in model/preprocessing.py passes a literal kind from ImageError.KINDS (which the
    constructor checks too, but only on the paths a test happens to reach)."""
    sites = []
    for path in IMAGE_FILES:
        for call in calls_named(path, ("ImageError",)):
            kind = reason_of(call)
            where = f"{path}:{call.lineno}"
            assert isinstance(kind, ast.Constant) and isinstance(kind.value, str), f"{where}: no literal kind"
            assert kind.value in ImageError.KINDS, f"{where}: {kind.value!r} is not an ImageError kind"
            sites.append((where, kind.value))
    assert len(sites) >= 8, sites  # nine when this test was written
    assert {kind for _, kind in sites} == set(ImageError.KINDS)  # and every kind is raised somewhere


# ---------------------------------------------------------------- the one table


def test_bad_input_is_400_invalid_argument_in_both_bodies():
    refused = refusals.refusal(InputError("not an image", Reason.NOT_AN_IMAGE))
    assert refused == refusals.Refusal(400, "Bad Request", "INVALID_ARGUMENT", "InputError", "not an image",
                                       "not_an_image")
    assert refused.torchserve_body() == {"code": 400, "type": "InputError", "message": "not an image"}
    assert refused.v2_body() == {"error": "not an image"}


def test_a_limit_is_413_and_invalid_argument_not_resource_exhausted():
    """Resending a request that is too large cannot succeed; gRPC clients retry RESOURCE_EXHAUSTED."""
    refused = refusals.refusal(InputTooLarge("300 images in one request; the limit is 256", Reason.TOO_MANY_IMAGES))
    assert (refused.status, refused.phrase, refused.grpc_code, refused.error_type, refused.reason) == (
        413, "Payload Too Large", "INVALID_ARGUMENT", "InputTooLarge", "too_many_images")
    assert refused.torchserve_body() == {"code": 413, "type": "InputTooLarge",
                                         "message": "300 images in one request; the limit is 256"}
    assert refused.v2_body() == {"error": "300 images in one request; the limit is 256"}


@pytest.mark.parametrize("bug", [RuntimeError("secret path /etc/x"), KeyError("secret"), ValueError("secret"),
                                 ImageError("secret", "blank_image")])
def test_a_bug_is_500_internal_and_gives_nothing_away(bug):
    """Any exception that is no InputError, a ValueError or an ImageError that was never turned into a request's
    refusal included."""
    refused = refusals.refusal(bug)
    assert (refused.status, refused.phrase, refused.grpc_code, refused.error_type, refused.reason) == (
        500, "Internal Server Error", "INTERNAL", "InternalError", "internal")
    assert refused.message == refusals.INTERNAL_MESSAGE == "internal error while reading the input"
    assert "secret" not in str(refused.torchserve_body()) + str(refused.v2_body())
    assert refused.torchserve_body() == {"code": 500, "type": "InternalError", "message": refusals.INTERNAL_MESSAGE}


def test_the_grpc_codes_are_grpcs_own_names_and_every_error_type_is_a_label():
    errors = [InputError("x", Reason.BAD_JSON), InputTooLarge("x", Reason.TOO_MANY_IMAGES), RuntimeError("x")]
    for refused in map(refusals.refusal, errors):
        assert grpc.StatusCode[refused.grpc_code].name == refused.grpc_code
        assert refused.error_type in LABEL_VALUES["ErrorType"] and refused.reason in LABEL_VALUES["Reason"]
    assert {refusals.refusal(error).error_type for error in errors} == LABEL_VALUES["ErrorType"]


# ---------------------------------------------------------------- one validator per fault


def refused(call, *args) -> InputError:
    with pytest.raises(InputError) as raised:
        call(*args)
    return raised.value


def test_check_image_count():
    for count in (1, 255, 256):
        refusals.check_image_count(count)
    refusals.check_image_count(3, 3)
    empty = refused(refusals.check_image_count, 0)
    assert (type(empty), empty.reason, str(empty)) == (InputError, Reason.EMPTY_BODY, "no images in the request")
    assert refused(refusals.check_image_count, -1).reason is Reason.EMPTY_BODY
    too_many = refused(refusals.check_image_count, 257)
    assert type(too_many) is InputTooLarge and too_many.reason is Reason.TOO_MANY_IMAGES
    assert str(too_many) == "257 images in one request; the limit is 256" == str(
        refused(refusals.check_image_count, 257, refusals.MAX_IMAGES_PER_REQUEST))
    assert str(refused(refusals.check_image_count, 4, 3)) == "4 images in one request; the limit is 3"


def test_check_explained_count():
    for count in (0, 1, refusals.MAX_EXPLAINED_IMAGES):
        refusals.check_explained_count(count)
    too_many = refused(refusals.check_explained_count, 17)
    assert type(too_many) is InputTooLarge and too_many.reason is Reason.TOO_MANY_IMAGES
    assert str(too_many) == "17 images to explain in one request; the limit is 16"
    assert str(refused(refusals.check_explained_count, 3, 2)) == "3 images to explain in one request; the limit is 2"


def test_parse_topk_rejects_bools_and_out_of_range():
    assert refusals.parse_topk(10, 10) == 10 and refusals.parse_topk(1, 10) == 1
    for bad in (0, 11, -1, True, False, 2.0, "3", None, [3]):
        error = refused(refusals.parse_topk, bad, 10)
        assert error.reason is Reason.BAD_TOPK and str(error) == f"topk must be an integer from 1 to 10, got {bad!r}"


def test_decode_base64_reads_base64_and_data_urls():
    png = png_bytes(STROKE)
    text = base64.b64encode(png).decode()
    assert refusals.decode_base64(text) == png == refusals.decode_base64(f"data:image/png;base64,{text}", None)
    assert refusals.decode_base64("") == b""


@pytest.mark.parametrize("text, field, message", [
    (7, '"data"', '"data" must be a base64 string, got int'),
    (None, '"data"', '"data" must be a base64 string, got NoneType'),
    (["aGk="], '"data"', '"data" must be a base64 string, got list'),
    ("###not base64###", '"data"', '"data" is not valid base64'),
    ("aGk", '"data"', '"data" is not valid base64'),  # bad padding
    ("é", '"data"', '"data" is not valid base64'),  # not ASCII
    ("data:image/png;base64,%%%", '"data"', '"data" is not valid base64'),
    (7, None, "not a base64 string: got int"),
    ("%%%", None, "not valid base64"),
])
def test_decode_base64_refuses_what_is_not_base64(text, field, message):
    error = refused(refusals.decode_base64, text, field)
    assert error.reason is Reason.BAD_BASE64 and str(error) == message


def test_decode_image_gives_grey_pixels():
    grey = refusals.decode_image(png_bytes(STROKE))
    assert grey.shape == (28, 28) and np.array_equal(np.asarray(grey, np.float32) / (255 if grey.dtype == np.uint8
                                                                                      else 1), STROKE / 255.0)


@pytest.mark.parametrize("data, reason, message", [
    (b"", Reason.EMPTY_BODY, "empty body: POST an image (PNG, JPEG, BMP, GIF, WEBP) or JSON as the request body"),
    (b"junk", Reason.NOT_AN_IMAGE, "not an image: expected one of"),
    (png_bytes(STROKE)[:60], Reason.UNREADABLE_IMAGE, "unreadable image"),
    (png_header_only(5000, 4000), Reason.IMAGE_TOO_LARGE, "image too large: 5000x4000 pixels"),
    (png_bytes(np.full((4, 40), 255, np.uint8)), Reason.IMAGE_TOO_SMALL, "image too small: 40x4 pixels"),
], ids=["empty", "junk", "truncated", "too large", "too small"])
def test_decode_image_refuses_with_the_images_kind_as_reason(data, reason, message):
    error = refused(refusals.decode_image, data)
    assert type(error) is InputError and error.reason is reason and str(error).startswith(message)
    if data:  # the words are preprocessing's own
        with pytest.raises(ImageError) as image_error:
            preprocessing.decode_grey(data)
        assert str(image_error.value) == str(error) and image_error.value.kind == reason.value


def test_decode_each_names_the_image_it_refuses():
    def decode(item):
        if item == "bad":
            raise InputError("not an image", Reason.NOT_AN_IMAGE)
        return item.upper()

    assert refusals.decode_each(["a", "b"], decode) == ["A", "B"]
    assert refusals.decode_each([], decode) == []
    error = refused(refusals.decode_each, ["a", "b", "bad", "bad"], decode)
    assert str(error) == "image 2: not an image" and error.reason is Reason.NOT_AN_IMAGE
    with pytest.raises(KeyError):  # a bug is no refusal of an image: it is not renamed
        refusals.decode_each(["a"], lambda item: {}[item])


def test_flatten_reads_flat_and_nested_arrays_row_major():
    assert refusals.flatten([[1, [2, 3]], [4]]) == [1, 2, 3, 4]
    assert refusals.flatten([[[1, 2], [3, 4]], [[5, 6], [7, 8]]]) == list(range(1, 9))
    assert refusals.flatten([1, 2, 3]) == [1, 2, 3]
    assert refusals.flatten([]) == [] and refusals.flatten([[], [[]]]) == []
    for bad, kind in (("x", "str"), ({"a": 1}, "dict"), (None, "NoneType"), (7, "int")):
        error = refused(refusals.flatten, bad)
        assert error.reason is Reason.BAD_REQUEST and str(error) == f'"data" must be a list, got {kind}'


def test_pixel_array_keeps_the_shape_of_numbers():
    assert refusals.pixel_array([[0, 1.5], [255, 7]]).tolist() == [[0.0, 1.5], [255.0, 7.0]]
    assert refusals.pixel_array([[0] * 28] * 28).shape == (28, 28)
    assert refusals.pixel_array([1, 2, 3]).dtype == np.float64
    assert refusals.pixel_array([]).shape == (0,)


@pytest.mark.parametrize("data", [
    "not an array", 7, None, {"pixels": 1}, [[0] * 27 + ["7"]] * 28, [[0] * 27 + [None]] * 28,
    [[True] * 28] * 28, [[0, 1], [2]], [[{"a": 1}] * 28] * 28, [0, [1, 2]],
], ids=["string", "number", "null", "object", "numeric strings", "nulls", "bools", "ragged", "objects", "mixed"])
def test_pixel_array_refuses_what_is_not_numbers(data):
    error = refused(refusals.pixel_array, data)
    assert error.reason is Reason.BAD_PIXELS and str(error) == "pixels must be an array of numbers 0-255"


def test_check_pixel_range():
    for fine in (np.zeros((2, 28, 28)), np.full((28, 28), 255.0), np.arange(256, dtype=np.uint8), np.zeros(0)):
        refusals.check_pixel_range(fine)
    for bad in (np.float64("nan"), np.inf, -np.inf):
        array = np.zeros((28, 28))
        array[3, 4] = bad
        error = refused(refusals.check_pixel_range, array)
        assert error.reason is Reason.BAD_PIXELS and str(error) == "pixels hold NaN or infinite values"
    assert str(refused(refusals.check_pixel_range, np.array([-1, 0, 3], np.int16))) == \
        "pixel values must lie in 0..255, got -1..3"
    assert str(refused(refusals.check_pixel_range, np.array([0.0, 255.5]))) == \
        "pixel values must lie in 0..255, got 0..255.5"
    assert refused(refusals.check_pixel_range, np.array([300], np.int16)).reason is Reason.BAD_PIXELS


def test_frame_count_reads_one_frame_or_n():
    assert refusals.frame_count([28, 28]) == 1 and refusals.frame_count((28, 28)) == 1
    assert refusals.frame_count([3, 28, 28]) == 3 == refusals.frame_count((3, 1, 28, 28))
    assert refusals.frame_count([0, 28, 28]) == 0  # check_image_count's to refuse


@pytest.mark.parametrize("shape", [[28], [], [2, 27, 28], [2, 28, 27], [28, 28, 1], [2, 2, 28, 28], [1, 1, 1, 28, 28],
                                   (1, 28, 28, 1)])
def test_frame_count_refuses_other_shapes(shape):
    error = refused(refusals.frame_count, shape)
    assert error.reason is Reason.BAD_PIXELS
    assert str(error) == f"pixel frames must be N x 28 x 28, got shape {list(shape)}"


def test_check_one_frame():
    refusals.check_one_frame((28, 28))
    for shape in ((27, 28), (28,), (1, 28, 28), (28, 28, 2)):
        error = refused(refusals.check_one_frame, shape)
        assert error.reason is Reason.BAD_PIXELS and str(error) == f"pixel array must be 28x28, got shape {list(shape)}"


def test_the_limits_are_the_ones_the_clients_are_told():
    """docs and the refusals' words name these: 256 images a request, 16 explained; the predictor's default too."""
    assert refusals.MAX_IMAGES_PER_REQUEST == 256 and refusals.MAX_EXPLAINED_IMAGES == 16
    assert predictor.Settings().max_images == refusals.MAX_IMAGES_PER_REQUEST
