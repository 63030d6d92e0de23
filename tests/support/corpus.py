"""A corpus of mixed requests and the answers the TorchServe handler gave them, kept to hold its answers byte for byte.

Each batch is what a worker is handed: TorchServe's request rows with the request properties its frontend passes
(REST /predictions, REST Open Inference Protocol paths, gRPC), good and bad requests side by side, every format the
handler reads. Each answer is what the handler returned: status and reason phrase, response headers, content type,
body, and the metric rows the batch emitted (their counts; durations only by name).

The requests are built here once and stored with their answers in tests/data/handler_corpus.json:

    python -m tests.support.corpus --record tests/data/handler_corpus.json

and tests/handler/test_digit_handler.py replays the stored requests against today's handler. Recording from another
commit: check that commit out, copy this file into its tests/support/ (it needs only that commit's
handler_context.make_context beside it), run the command there. The model is made here
from a fixed seed (untrained: its answers are arbitrary, but the same on every run of one machine), so the corpus
does not depend on a training run.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import re
import struct
import subprocess
from pathlib import Path

import numpy as np

from tests.support.images import encode, npy_bytes, png_bytes, png_header_only, sklearn_scans_u8

SEED = 0  # the corpus model's initialisation
# The handler's settings while the corpus is recorded and replayed: max_images small enough that "too many images"
# costs a few kB of corpus, and still over the 16 an explanation may carry.
SETTINGS = {"handler": {"topk": 3, "max_images": 20, "metrics_seconds": 0}}
# Metric rows whose value is a duration: compared by name and labels only.
TIMED = {"HandlerTime", "digits_handler_milliseconds_total", "digits_preprocessing_milliseconds_total"}
METRIC_LINE = re.compile(r"^\[METRICS\](?P<name>[^|]+?)\.(?P<unit>[^.:|]+):(?P<value>[^|]+)\|#(?P<dimensions>[^|]*)")
WORKER_METRIC = re.compile(r"^digits_worker_")  # the worker's RSS and CPU time: reported on a clock, not per batch

# The request properties TorchServe's frontend hands the worker (tests/support/handler_context.py says which).
REST = {"Host": "127.0.0.1:8080", "Authorization": "Bearer token", "url_path": "", "explain": "False",
        "body": {"content-type": "image/png"}}
REST_EXPLAIN = {**REST, "explain": "True"}
V2 = {"Host": "127.0.0.1:8080", "Authorization": "Bearer token", "explain": "False",
      "body": {"content-type": "application/json"}}
V2_EXPLAIN = {**V2, "explain": "True"}
GRPC = {"data": {"content-type": None}}
BINARY_HEADER = "Inference-Header-Content-Length"


# ---------------------------------------------------------------- building the requests


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def images() -> dict[str, np.ndarray]:
    """Digits and odd images, all from packages or drawn here: scikit-learn's scans enlarged to 32x32, a stroke."""
    scans, _ = sklearn_scans_u8()
    enlarged = [np.kron(scan, np.ones((4, 4), np.uint8)) for scan in scans[:12]]
    stroke = np.zeros((28, 28), np.uint8)
    stroke[6:22, 12:16] = 255
    seven = np.zeros((28, 28), np.uint8)
    seven[5:8, 6:22] = 255
    for row in range(8, 24):
        seven[row, max(20 - (row - 8) // 2, 0):23 - (row - 8) // 2] = 255
    return {"scans": np.stack(enlarged), "stroke": stroke, "seven": seven, "blank": np.zeros((28, 28), np.uint8),
            "dark_on_light": 255 - np.kron(scans[3], np.ones((6, 6), np.uint8))}


def v2(tensor: dict, **document) -> dict:
    return {"inputs": [{"name": "x", **tensor}], **document}


def v2_images(pictures, request_id: str | None = None, **document) -> dict:
    body = v2({"datatype": "BYTES", "shape": [len(pictures)], "data": [b64(png_bytes(p)) for p in pictures]},
              **document)
    return {"id": request_id, **body} if request_id is not None else body


def v2_pixels(frames: np.ndarray, datatype: str = "UINT8", shape: list[int] | None = None, **document) -> dict:
    return v2({"datatype": datatype, "shape": shape or list(frames.shape), "data": frames.reshape(-1).tolist()},
              **document)


def binary(header: dict, data: bytes, headers: dict = V2, length: str | None = None) -> tuple[dict, dict]:
    """A request in the binary tensor data extension: its request properties and its row."""
    text = json.dumps(header).encode()
    properties = {**headers, BINARY_HEADER: length or str(len(text)), "body": {"content-type": None}}
    return properties, {"body": bytearray(text + data)}


def length_prefixed(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def binary_images(pictures, **document) -> tuple[dict, dict]:
    data = length_prefixed([png_bytes(p) for p in pictures])
    return binary({"id": "bin", "inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(pictures)],
                                            "parameters": {"binary_data_size": len(data)}}], **document}, data)


def binary_pixels(frames: np.ndarray, datatype: str, **document) -> tuple[dict, dict]:
    data = np.asarray(frames, dtype={"UINT8": "<u1", "FP32": "<f4", "INT64": "<i8", "FP64": "<f8"}[datatype]).tobytes()
    return binary({"inputs": [{"name": "pixels", "datatype": datatype, "shape": list(frames.shape),
                               "parameters": {"binary_data_size": len(data)}}], **document}, data)


def batches() -> list[list[tuple[dict, dict]]]:
    """The corpus: batches of (request properties, row)."""
    from PIL import Image

    pics = images()
    scans, stroke, seven, blank = pics["scans"], pics["stroke"], pics["seven"], pics["blank"]
    png = [png_bytes(scan) for scan in scans]
    pixels = np.rint(scans[:, 2:30, 2:30].astype(np.float64)).astype(int)  # 28x28 crops, white on black
    grey = Image.fromarray(scans[5])
    big = np.kron(scans[6], np.ones((125, 125), np.uint8))  # 4000 x 4000
    nan_pixels = b'{"pixels": [' + b",".join([b"[" + b",".join([b"NaN"] * 28) + b"]"] * 28) + b"]}"

    own_good = [
        (REST, {"body": bytearray(png[0])}),
        (REST, {"body": {"data": b64(png[1])}}),
        (REST, {"data": bytearray(png[2])}),
        (REST, {"body": json.dumps({"data": "data:image/png;base64," + b64(png[3]), "topk": 5}).encode()}),
        (REST, {"body": {"pixels": pixels[4].tolist()}}),
        (REST, {"body": {"pixels": (pixels[5] / 1.0).tolist(), "topk": 10}}),
        (REST, {"body": {"images": [b64(p) for p in png[6:9]], "topk": 2}}),
        (REST, {"body": bytearray(npy_bytes(pixels[:4].astype(np.uint8)))}),
        (REST, {"body": bytearray(npy_bytes(pixels[4:6].astype(np.float32)))}),
        (REST, {"body": bytearray(npy_bytes(pixels[6:8].astype(">i4")))}),
        (REST, {"body": json.dumps({"data": b64(png[9])})}),
        ({**REST, "X-Request-Id": "client-1"}, {"body": bytearray(png[10])}),
        ({**REST, "x-request-id": "client-2"}, {"body": bytearray(b"refused with an id")}),
        (REST, {"body": bytearray(encode(grey, "JPEG", quality=90))}),
        (REST, {"body": bytearray(encode(grey.convert("P"), "GIF"))}),
        (REST, {"body": bytearray(encode(Image.fromarray(scans[7].astype(np.uint16) * 257), "PNG"))}),
    ]
    own_more = [
        (REST, {"body": bytearray(encode(grey.convert("RGBA"), "PNG"))}),
        (REST, {"body": bytearray(png_bytes(pics["dark_on_light"]))}),
        (REST, {"body": bytearray(png_bytes(seven))}),
        (REST, {"body": bytearray(png_bytes(np.pad(stroke, ((10, 3), (0, 40)))))}),  # another size in the batch
        (REST, {"body": bytearray(png_bytes(big))}),
        (REST, {"body": bytearray(encode(grey.convert("CMYK"), "JPEG", quality=95))}),
        (REST, {"body": bytearray(encode(grey.convert("P"), "PNG", transparency=0))}),
        (REST, {"body": bytearray(encode(grey, "BMP"))}),
        (REST, {"body": bytearray(encode(grey, "WEBP", lossless=True))}),
        (REST, {"body": bytearray(png_bytes(np.stack([scans[8]] * 3, axis=2)))}),  # RGB
    ]
    own_bad = [
        (REST, {"body": bytearray()}),
        (REST, {}),
        (REST, {"a": b"1", "b": b"2"}),
        (REST, {"body": bytearray(b"\x00\x01garbage" * 10)}),
        (REST, {"body": "hello"}),
        (REST, {"body": bytearray(b'{"data": ')}),
        (REST, {"body": [1, 2, 3]}),
        (REST, {"body": bytearray(b"[1, 2, 3]")}),
        (REST, {"body": {"image": "x"}}),
        (REST, {"body": {"data": "###not base64###"}}),
        (REST, {"body": {"data": b64(b"just text")}}),
        (REST, {"body": {"data": 7}}),
        (REST, {"body": {"pixels": [[0] * 28] * 3}}),
        (REST, {"body": {"pixels": [[0] * 28] * 27}}),
        (REST, {"body": {"pixels": [[999] * 28] * 28}}),
        (REST, {"body": {"pixels": [[-1] * 28] * 28}}),
        (REST, {"body": bytearray(nan_pixels)}),
        (REST, {"body": {"pixels": "x"}}),
        (REST, {"body": {"pixels": [["7"] * 28] * 28}}),
        (REST, {"body": {"pixels": pixels[0].tolist(), "topk": 11}}),
        (REST, {"body": {"pixels": pixels[0].tolist(), "topk": 0}}),
        (REST, {"body": {"pixels": pixels[0].tolist(), "topk": True}}),
        (REST, {"body": {"images": "abc"}}),
        (REST, {"body": {"images": []}}),
        (REST, {"body": {"images": [b64(png[0])] * 3 + ["###"]}}),
        (REST, {"body": {"images": [b64(png[0]), 7]}}),
        (REST, {"body": {"images": [b64(b"junk")]}}),
        (REST, {"body": {"images": [b64(png[0])] * 21}}),
        (REST, {"body": bytearray(npy_bytes(np.zeros((2, 28, 27), np.uint8)))}),
        (REST, {"body": bytearray(npy_bytes(np.zeros((21, 28, 28), np.uint8)))}),
        (REST, {"body": bytearray(npy_bytes(np.zeros((1, 28, 28), np.complex64)))}),
        (REST, {"body": bytearray(npy_bytes(np.full((1, 28, 28), np.nan, np.float32)))}),
        (REST, {"body": bytearray(npy_bytes(np.full((1, 28, 28), 300, np.int16)))}),
        (REST, {"body": bytearray(npy_bytes(np.zeros((1, 28, 28), np.uint8))[:-5])}),
        (REST, {"body": bytearray(b"\x93NUMPY\x09\x00")}),
        (REST, {"body": bytearray(npy_bytes(np.zeros((0, 28, 28), np.uint8)))}),
        (REST, {"body": bytearray(png_bytes(np.zeros((4, 40), np.uint8)))}),
        (REST, {"body": bytearray(png_bytes(np.full((1, 1), 255, np.uint8)))}),
        (REST, {"body": bytearray(png[0][:50])}),
        (REST, {"body": bytearray(png_header_only(50_000, 50_000))}),
        (REST, {"body": bytearray(png_header_only(5_000, 5_000))}),
        (REST, {"body": bytearray(png_bytes(blank))}),
        (REST, {"body": {"images": [b64(png[0]), b64(png_bytes(blank)), b64(png[1])]}}),
        (REST, {"body": bytearray(npy_bytes(np.stack([pixels[0], np.zeros((28, 28), int)]).astype(np.uint8)))}),
        (REST, {"body": bytearray(b"the digit seven")}),
        (REST, {"body": bytearray(b"II*\x00" + bytes(64))}),  # a TIFF's magic: not an accepted format
    ]
    explained = [
        (REST_EXPLAIN, {"body": bytearray(png[0])}),
        (REST, {"body": bytearray(png[1])}),
        (REST_EXPLAIN, {"body": {"images": [b64(p) for p in png[2:4]]}}),
        (REST_EXPLAIN, {"body": {"images": [b64(png[0])] * 17}}),
        (REST_EXPLAIN, {"body": bytearray(b"junk")}),
        (REST_EXPLAIN, {"body": {"pixels": pixels[4].tolist(), "topk": 1}}),
        (GRPC, {"data": bytearray(png[5]), "explain": b"true"}),
        (V2_EXPLAIN, {"body": v2_images(scans[6:8], "why-1")}),
        (V2_EXPLAIN, {"body": v2_images(scans[8:9], outputs=[{"name": "attributions"}, {"name": "labels"}])}),
        (V2, {"body": v2_images(scans[8:9], outputs=[{"name": "attributions"}])}),
    ]
    v2_good = [
        (V2, {"body": v2_images(scans[:3], "r-1")}),
        (V2, {"body": v2_pixels(pixels[3:7].astype(np.uint8))}),
        (V2, {"body": v2_pixels(pixels[7:8] / 1.0, "FP32")}),
        (V2, {"body": v2_pixels(pixels[8], "UINT8")}),
        (V2, {"body": v2_pixels(pixels[9:10], "INT64", shape=[1, 1, 28, 28])}),
        (V2, {"body": v2({"datatype": "UINT8", "shape": [1, 28, 28], "data": [pixels[10].tolist()]},
                         outputs=[{"name": "labels"}])}),
        (V2, {"body": json.dumps(v2_images(scans[11:12], "as-bytes")).encode()}),
        (V2, {"body": v2_images(scans[:1], "both", outputs=[{"name": "labels"}, {"name": "probabilities"}])}),
        (V2, {"body": v2({"datatype": "BYTES", "shape": [2, 1], "data": [b64(png[0]), b64(png[1])]})}),
        (V2, {"body": v2({"datatype": "BYTES", "shape": [1], "data": ["data:image/png;base64," + b64(png[2])]})}),
        (V2, {"body": v2({"datatype": "FP32", "shape": [1, 28, 28], "data": (pixels[3] / 255.0).reshape(-1).tolist()})}),
        (V2, {"body": v2({"datatype": "BYTES", "shape": [-1], "data": [b64(png[3])]})}),
    ]
    v2_bad = [
        (V2, {"body": {"id": 7, **v2_pixels(pixels[0].astype(np.uint8))}}),
        (V2, {"body": {"inputs": "x"}}),
        (V2, {"body": {"inputs": []}}),
        (V2, {"body": v2({"datatype": "UINT8"})}),
        (V2, {"body": {"inputs": [{"name": 1, "datatype": "UINT8", "shape": [28, 28], "data": [0] * 784}]}}),
        (V2, {"body": v2({"datatype": "UINT8", "shape": "28x28", "data": []})}),
        (V2, {"body": v2({"datatype": "UINT8", "shape": [28, 28], "data": [0] * 784}, outputs="labels")}),
        (V2, {"body": v2({"datatype": "UINT8", "shape": [28, 28], "data": [0] * 784}, outputs=[{"name": "logits"}])}),
        (V2, {"body": v2({"datatype": "UINT8", "shape": [28, 28], "data": "x"})}),
        (V2, {"body": v2({"datatype": "UINT8", "shape": [28, 28], "data": ["a"] * 784})}),
        (V2, {"body": v2({"datatype": "UINT8", "shape": [28, 28], "data": [0] * 783})}),
        (V2, {"body": v2({"datatype": "FP32", "shape": [28, 28], "data": [float("nan")] * 784})}),
        (V2, {"body": v2({"datatype": "UINT8", "shape": [28, 28], "data": [300] * 784})}),
        (V2, {"body": v2({"datatype": "UINT8", "shape": [2, 27, 28], "data": [0] * 1512})}),
        (V2, {"body": v2({"datatype": "UINT8", "shape": [21, 28, 28], "data": [0] * (21 * 784)})}),
        (V2, {"body": v2({"datatype": "UINT8", "shape": [0, 28, 28], "data": []})}),
        (V2, {"body": v2({"datatype": "FP16", "shape": [28, 28], "data": [0] * 784})}),
        (V2, {"body": v2({"datatype": "BOOL", "shape": [1], "data": [True]})}),
        (V2, {"body": v2({"datatype": "BYTES", "shape": [1, 2], "data": ["", ""]})}),
        (V2, {"body": v2({"datatype": "BYTES", "shape": [2], "data": [b64(png[0])]})}),
        (V2, {"body": v2({"datatype": "BYTES", "shape": [1], "data": [7]})}),
        (V2, {"body": v2({"datatype": "BYTES", "shape": [1], "data": ["%%%"]})}),
        (V2, {"body": v2({"datatype": "BYTES", "shape": [1], "data": [b64(b"junk")]})}),
        (V2, {"body": v2({"datatype": "BYTES", "shape": [1], "data": [b64(png_bytes(blank))]})}),
        (V2, {"body": v2({"datatype": "UINT8", "shape": [28, 28], "data": [0] * 784})}),
        (V2, {"body": v2({"datatype": "UINT8", "shape": [-1, 28, 28], "data": []})}),
        (V2, {"body": bytearray(b"{not json")}),
        (V2, {"body": bytearray()}),
        (V2, {"body": bytearray(png[0])}),
        (V2, {"body": {"data": b64(png[0])}}),
        (V2, {"body": v2({"datatype": "UINT8", "shape": [28, 28], "data": [0] * 784, "parameters": []})}),
    ]
    bytes_header = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 8}}]}
    pixels_header = {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 28, 28],
                                 "parameters": {"binary_data_size": 784}}]}
    four = b"\x04\x00\x00\x00abcd"
    v2_binary = [
        binary_images(scans[:3], parameters={"binary_data_output": True}),
        binary_pixels(pixels[3:5], "UINT8", parameters={"binary_data_output": True}),
        binary_pixels(pixels[5:6] / 1.0, "FP32", parameters={"binary_data_output": True}),
        binary_pixels(pixels[6:8], "INT64"),
        binary_pixels(pixels[8:9] / 1.0, "FP64"),
        binary_images(scans[9:10]),
        binary_images(scans[9:10], outputs=[{"name": "labels", "parameters": {"binary_data": True}},
                                            {"name": "probabilities"}]),
        binary_images(scans[10:11], parameters={"binary_data_output": True},
                      outputs=[{"name": "probabilities", "parameters": {"binary_data": False}}]),
        binary(bytes_header, four, length="12x"),
        binary(bytes_header, four, length="99999"),
        binary(bytes_header, four, length="5"),
        binary(bytes_header, b"\x04\x00\x00\x00abc"),
        binary(bytes_header, b"\x09\x00\x00\x00abcd"),
        binary({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1],
                            "parameters": {"binary_data_size": 2}}]}, b"\x01\x00"),
        binary(bytes_header, four),
        binary({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2],
                            "parameters": {"binary_data_size": 8}}]}, four),
        binary({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["aGk="],
                            "parameters": {"binary_data_size": 4}}]}, b"abcd"),
        binary({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]}, b"abcd"),
        binary({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 28, 28],
                            "parameters": {"binary_data_size": 700}}]}, bytes(700)),
        binary({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 28, 28],
                            "parameters": {"binary_data_size": -1}}]}, b""),
        binary({**pixels_header, "parameters": {"binary_data_output": "yes"}}, bytes(784)),
        binary({**pixels_header, "outputs": [{"name": "labels", "parameters": []}]}, bytes(784)),
        binary(pixels_header, bytes(784)),
        binary({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 28, 28],
                            "parameters": {"binary_data_size": 784 * 4}}]},
               np.full(784, np.nan, "<f4").tobytes()),
        binary({"data": "aGk="}, b""),
        binary_pixels(np.zeros((21, 28, 28), np.uint8), "UINT8"),
    ]
    grpc = [
        (GRPC, {"data": bytearray(png[0])}),
        (GRPC, {"data": bytearray(b"junk")}),
        (GRPC, {"data": bytearray(npy_bytes(pixels[:3].astype(np.uint8)))}),
        (GRPC, {"data": bytearray(json.dumps({"pixels": pixels[3].tolist(), "topk": 4}).encode())}),
        (GRPC, {"data": bytearray()}),
        (GRPC, {"body": v2_images(scans[4:6], "g-1")}),
        (GRPC, {"body": v2_pixels(pixels[6:7].astype(np.uint8))}),
        (GRPC, {"body": {"id": "g-7", **v2({"datatype": "BYTES", "shape": [1], "data": [b64(b"junk")]})}}),
        (GRPC, {"body": v2({"datatype": "UINT8", "shape": [21, 28, 28], "data": [0] * (21 * 784)})}),
        (GRPC, {"body": {"id": "g-8", "inputs": []}}),
        (GRPC, {"body": v2_images(scans[7:8], "g-9", outputs=[{"name": "labels"}])}),
    ]
    mixed = [own_good[0], v2_good[0], grpc[0], own_bad[3], v2_bad[22], v2_binary[0], explained[0], grpc[7],
             own_good[6], v2_binary[14]]

    def chunks(items: list, size: int) -> list[list]:
        return [items[start:start + size] for start in range(0, len(items), size)]

    lone = [[request] for request in (own_good[0], v2_good[0], grpc[0], own_bad[3], v2_bad[22], explained[0])]
    return [*chunks(own_good, 16), *chunks(own_more, 10), *chunks(own_bad, 12), *chunks(explained, 10),
            *chunks(v2_good, 12), *chunks(v2_bad, 11), *chunks(v2_binary, 9), *chunks(grpc, 11), mixed, *lone]


# ---------------------------------------------------------------- storing rows and answers as JSON


def encode_value(value: object) -> dict:
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": b64(bytes(value))}
    if isinstance(value, str):
        return {"text": value}
    return {"json": value}


def decode_value(stored: dict) -> object:
    if "bytes" in stored:
        return bytearray(base64.b64decode(stored["bytes"]))
    return stored["text"] if "text" in stored else stored["json"]


def encode_row(row: dict) -> dict:
    return {key: encode_value(value) for key, value in row.items()}


def decode_row(stored: dict) -> dict:
    return {key: decode_value(value) for key, value in stored.items()}


# ---------------------------------------------------------------- the model and a batch handled


def make_model_dir(directory: Path) -> Path:
    """An unpacked archive's files for the corpus model: weights from SEED, labels, the weights' digest."""
    import torch

    from model import preprocessing
    from model.checkpoint import WEIGHTS_FILE, save_checkpoint
    from model.digit_cnn import DigitCNN, DigitCNNConfig

    torch.manual_seed(SEED)
    config = DigitCNNConfig()
    save_checkpoint(directory / WEIGHTS_FILE, DigitCNN(config), config, labels=preprocessing.DEFAULT_LABELS,
                    resolution=preprocessing.DIGIT_BOX, dataset="corpus")
    (directory / "index_to_name.json").write_text(json.dumps({str(i): str(i) for i in range(10)}))
    digest = hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest()
    (directory / "weights.sha256").write_text(f"{digest}  {WEIGHTS_FILE}\n")
    return directory


def metric_row(message: str) -> tuple[str, float, dict] | None:
    """A metric line TorchServe's metrics API writes ([METRICS]name.Unit:value|#Dim:value,...|...) as (name, value,
    labels); None for any other log message."""
    match = METRIC_LINE.match(message)
    if match is None:
        return None
    labels = dict(pair.split(":", 1) for pair in match["dimensions"].split(",") if pair)
    return match["name"], float(match["value"]), labels


class MetricLines(logging.Handler):
    """The [METRICS] lines TorchServe's metrics API writes, as (name, value or None for a duration, labels)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.rows: list = []

    def emit(self, record: logging.LogRecord) -> None:
        row = metric_row(record.getMessage())
        if row is None or WORKER_METRIC.match(row[0]):
            return
        name, value, labels = row
        self.rows.append([name, None if name in TIMED else value, labels])


def answer_of(context, idx: int, result: object) -> dict:
    headers = dict(context.get_response_headers(idx))
    if "X-Batch-Id" in headers:  # "<worker pid>-<batch number>": the pid is this process's
        headers["X-Batch-Id"] = re.sub(r"^\d+-", "PID-", headers["X-Batch-Id"])
    status, phrase = context.get_response_status(idx)
    return {"status": status, "phrase": phrase, "content_type": context.get_response_content_type(idx),
            "headers": headers, "body": encode_value(result)}


def handle_all(handler_class, model_dir: Path, stored_batches: list) -> list[dict]:
    """Each stored batch through a new handler of `handler_class` (one per corpus, as one worker): the answers."""
    from tests.support.handler_context import make_context

    handler = handler_class()
    handler.initialize(make_context(model_dir, 1, SETTINGS))
    lines = MetricLines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(lines)
    root.setLevel(logging.INFO)
    try:
        results = []
        for batch in stored_batches:
            rows = [decode_row(request["row"]) for request in batch]
            context = make_context(model_dir, len(rows), SETTINGS, requests=[request["properties"] for request in batch])
            lines.rows = []
            answers = handler.handle(rows, context)
            results.append({"answers": [answer_of(context, idx, answer) for idx, answer in enumerate(answers)],
                            "metrics": sorted(lines.rows, key=lambda row: (row[0], sorted(row[2].items())))})
        return results
    finally:
        root.removeHandler(lines)
        root.setLevel(level)


def record(path: Path) -> None:
    import tempfile

    from handler.digit_handler import DigitHandler

    stored = [[{"properties": properties, "row": encode_row(row)} for properties, row in batch] for batch in batches()]
    with tempfile.TemporaryDirectory() as directory:
        results = handle_all(DigitHandler, make_model_dir(Path(directory)), stored)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"recorded_at": commit, "settings": SETTINGS, "seed": SEED,
                                "batches": [{"requests": batch, **result} for batch, result in zip(stored, results)]},
                               indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {path}: {sum(len(batch) for batch in stored)} requests in {len(stored)} batches")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, required=True, help="where to write the corpus")
    record(parser.parse_args(argv).record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
