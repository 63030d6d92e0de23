"""The values the bundle exports for each label with a closed set: what the alerts, the dashboard and the handler's
refusal reasons are checked against."""
from __future__ import annotations

# Labels with a closed set of values: a matcher naming any other value is a typo that matches nothing.
LABEL_VALUES: dict[str, frozenset[str]] = {
    "InputKind": frozenset({"image", "pixels", "multi_image", "oip"}),
    "ErrorType": frozenset({"InputError", "InputTooLarge", "InternalError"}),
    "Reason": frozenset({"empty_body", "not_an_image", "unreadable_image", "image_too_large", "image_too_small",
                         "blank_image", "bad_json", "bad_base64", "bad_pixels", "bad_npy", "too_many_images",
                         "bad_topk", "bad_request", "internal"}),
    "Label": frozenset(str(digit) for digit in range(10)),
    "protocol": frozenset({"rest", "grpc", "health"}),
    "Level": frozenset({"Host", "Model"}),
}
