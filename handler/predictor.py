"""The digit model's serving logic, for any server: set up once, then predict batches of decoded requests.

    predictor = Predictor()
    predictor.setup(model_dir, select_device(gpu_id), Settings.from_mapping(model_config["handler"]))
    answers = predictor.predict([Request([grey], topk=3), ...])  # a Prediction or a refusal per request, in order

`setup` verifies the weights' SHA-256 against the one recorded at packaging time, loads the network from its
checkpoint, optimises it for the CPU, reads the labels and warms everything up. `predict` takes requests already
decoded (handler/wire.py reads every wire format into them) and answers each with a Prediction, or with a typed
refusal (handler/refusals.py: an InputError such as a blank image, or any other exception for a bug, which costs
that request alone): the images of all of them go through the MNIST geometry in one batched call and the network in
one forward pass. What a refusal or a Prediction looks like on the wire is the caller's (handler/refusals.py,
handler/answers.py). Nothing here knows a server: TorchServe's handler (handler/digit_handler.py) is one adapter.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from handler import explanations, refusals
from model import checkpoint, preprocessing

logger = logging.getLogger(__name__)

DEFAULT_TOPK = 3  # how many ranked labels each answer carries unless the request or the settings ask otherwise
DIGEST_FILE = "weights.sha256"  # written by scripts/package.sh: "<hex>  <weights file name>"
WARM_UP_BATCHES = (1, 2, 8, 16)  # the batch sizes a worker sees most (TorchServe's batchSize is 16)


@dataclass(frozen=True)
class Settings:
    """The model's serving settings (model-config.yaml's `handler:` section, read by handler/digit_handler.py)."""

    torch_threads: int = 0  # PyTorch threads of this process; 0: torch's default (all cores)
    topk: int = DEFAULT_TOPK  # ranked labels per answer unless the request asks ("topk")
    max_images: int = refusals.MAX_IMAGES_PER_REQUEST  # images one request may carry (more: 413)
    optimize: bool = True  # CPU: TorchScript, frozen and optimised for inference; False: eager PyTorch

    @classmethod
    def from_mapping(cls, mapping: dict | None, adapter_keys: tuple[str, ...] = ()) -> Settings:
        """Settings from a config section; `adapter_keys` are the server adapter's own keys in it (skipped). Any
        other unknown key is refused: a misspelled setting fails loudly instead of leaving a default in its place."""
        mapping = dict(mapping or {})
        known = {item.name: item.type for item in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - set(known) - set(adapter_keys))
        if unknown:
            raise ValueError(f"unknown handler settings {unknown}; the settings are {sorted(known)} "
                             f"and {sorted(adapter_keys)}")
        casts = {"int": int, "bool": bool}
        return cls(**{key: casts[known[key]](value) for key, value in mapping.items() if key in known})


@dataclass(frozen=True)
class Limits:
    """What a request may ask of this model: what the readers of handler/wire.py check while decoding."""

    num_classes: int
    topk: int  # the default topk
    max_images: int


@dataclass
class Request:
    """One request, decoded: its grey images (each any size; uint8 0..255 or float32 0..1, as
    preprocessing.to_mnist_geometry_batch takes them), how many ranked labels it wants, whether it asked for many
    images (answered as a list) or one, whether it asked why (an explanation of each image), and how the input came
    ("image", "pixels", "multi_image" or "oip": the InputKind metric label)."""

    images: list[np.ndarray]
    topk: int
    many: bool = False
    kind: str = ""
    explain: bool = False

    def __post_init__(self):
        self.kind = self.kind or ("multi_image" if self.many else "image")


@dataclass
class Prediction:
    """One answered request: per image, the classes ranked best first (probabilities and class indices, at least as
    many as its topk) and every class's probability; with an explanation, what it adds per image."""

    values: list[list[float]]
    indices: list[list[int]]
    probabilities: torch.Tensor  # images x classes, on the CPU
    labels: list[str]  # the model's labels, by class index
    explanations: list[dict] = field(default_factory=list)

    @property
    def best(self) -> list[str]:
        """Each image's label."""
        return [self.labels[ranked[0]] for ranked in self.indices]


@dataclass
class StartTimes:
    """How long each part of `setup` took, in seconds."""

    weights: float = 0.0  # digest check and loading
    torchscript: float = 0.0
    warm_up: float = 0.0


# ---------------------------------------------------------------- setting up


def select_device(gpu_id: int | None) -> torch.device:
    """cuda:<gpu_id> when the server gave this process a GPU and CUDA works, else the CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(weights_path: str, digest_path: str) -> str:
    """Refuse weights whose SHA-256 differs from the one recorded at packaging time; the digest if they match.

    Runs before torch.load, so a swapped or corrupted file is never deserialised. An archive without the record
    is refused too: it was not built by scripts/package.sh.
    """
    name = os.path.basename(weights_path)
    try:
        with open(digest_path, encoding="utf-8") as file:
            expected, _, recorded_name = file.read().strip().partition("  ")
    except FileNotFoundError:
        raise RuntimeError(
            f"refusing to load {name}: no {DIGEST_FILE} in the archive (package with scripts/package.sh)"
        ) from None
    actual = file_sha256(weights_path)
    if recorded_name != name or actual != expected.lower():
        raise RuntimeError(
            f"refusing to load {name}: SHA-256 {actual} does not match {expected} recorded for "
            f"{recorded_name or '?'} at packaging time (tampered or corrupted weights)"
        )
    return actual


def optimize_for_cpu(model: torch.nn.Module) -> torch.nn.Module:
    """TorchScript, frozen and optimized for CPU inference (BatchNorm folded into the convolutions, oneDNN
    layouts): about 3x the eager throughput at batch 64 and 1.5x at batch 1 for this network.

    Traced once on one frame; the batch dimension stays free. Warmed up on the batch sizes a worker sees, so
    the first requests do not pay for TorchScript's specialisation.
    """
    example = torch.zeros(1, 1, preprocessing.IMAGE_SIZE, preprocessing.IMAGE_SIZE)
    # torch.jit is deprecated in favour of torch.compile/torch.export but works in the pinned torch; compiling
    # with inductor would need a C++ toolchain and tens of seconds in every worker at start.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        optimized = torch.jit.optimize_for_inference(torch.jit.trace(model, example))
    with torch.inference_mode():
        for batch in WARM_UP_BATCHES:
            for _ in range(2):
                optimized(example.expand(batch, -1, -1, -1).contiguous())
    return optimized


def load_labels(model_dir: str, num_classes: int) -> list[str]:
    """Labels from index_to_name.json in the archive; one per output of the network."""
    path = os.path.join(model_dir, "index_to_name.json")
    with open(path, encoding="utf-8") as file:
        labels = preprocessing.labels_from_mapping(json.load(file))
    if len(labels) != num_classes:
        raise ValueError(f"{path} names {len(labels)} classes, the network has {num_classes}")
    return labels


def forward(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """N x 1 x 28 x 28 -> N x classes probabilities."""
    with torch.inference_mode():
        return torch.softmax(model(batch), dim=1)


# ---------------------------------------------------------------- preprocessing a batch


def preprocess(requests: list[Request], resolution: int,
               device: torch.device | str | None = None) -> tuple[torch.Tensor, list[refusals.InputError | None]]:
    """Every image of every request -> network input, through the MNIST geometry in one batched call.

    Returns the inputs of all the images, in order (N x 1 x 28 x 28 on `device`), and per request None or the
    InputError that refuses it: its first refused image (blank), named "image i: " in a multi-image request.
    """
    images = [image for request in requests for image in request.images]
    frames, errors = preprocessing.to_mnist_geometry_batch(images, resolution, device)
    refused: list[refusals.InputError | None] = []
    start = 0
    for request in requests:
        stop = start + len(request.images)
        index, error = next(((index, error) for index, error in enumerate(errors[start:stop]) if error is not None),
                            (0, None))
        if error is not None:
            error = refusals.InputError.of_image(error)
            error = error.in_image(index) if request.many else error
        refused.append(error)
        start = stop
    return preprocessing.normalize(frames), refused


def preprocess_one_by_one(requests: list[Request], resolution: int,
                          device: torch.device | str | None = None) -> tuple[torch.Tensor, list[Exception | None]]:
    """preprocess, one request at a time: after an unexpected error in a batch, only the request it belongs to
    is refused (with that exception: a 500), the others are answered."""
    parts, refused = [], []
    for request in requests:
        try:
            inputs, (refusal,) = preprocess([request], resolution, device)
        except Exception as error:  # noqa: BLE001 - a bug; logged, and this request alone gets a 500
            logger.exception("unexpected error preprocessing a request")
            size = preprocessing.IMAGE_SIZE
            inputs, refusal = torch.zeros((len(request.images), 1, size, size), device=device), error
        parts.append(inputs)
        refused.append(refusal)
    return torch.cat(parts), refused


def preprocess_batch(requests: list[Request], resolution: int,
                     device: torch.device | str | None = None) -> tuple[torch.Tensor, list[range | Exception]]:
    """The requests' images -> the network inputs of the requests that remain answered, in order, and per request
    where its images lie in them (a range of rows) or the refusal that preprocessing gave it (a blank image). One
    batched call (`preprocess`); after an unexpected error in it, one call per request, so that the error costs
    only the request it belongs to."""
    try:
        inputs, refused = preprocess(requests, resolution, device)
    except Exception:  # a bug: find the request it belongs to, so that it costs that request alone
        logger.exception("unexpected error preprocessing a batch; preprocessing its requests one by one")
        inputs, refused = preprocess_one_by_one(requests, resolution, device)
    kept: list[int] = []
    places: list[range | Exception] = []
    start = 0
    for request, refusal in zip(requests, refused):
        count = len(request.images)
        if refusal is None:
            places.append(range(len(kept), len(kept) + count))
            kept += range(start, start + count)
        else:
            places.append(refusal)
        start += count
    if len(kept) == len(inputs):
        return inputs, places
    return inputs[torch.tensor(kept, dtype=torch.long, device=inputs.device)], places


# ---------------------------------------------------------------- the predictor


class Predictor:
    """The digit CNN behind any server: `setup` once, then `predict` batches of decoded requests."""

    def setup(self, model_dir: str, device: torch.device, settings: Settings = Settings(),
              weights_file: str = checkpoint.WEIGHTS_FILE) -> None:
        """Verify the weights' digest, load the network on `device`, optimise it (CPU), read the labels, warm up.
        A weights file that fails its digest raises RuntimeError before it is read."""
        started = time.perf_counter()
        if settings.torch_threads > 0:  # workers share the cores: each should use its share, not all of them
            torch.set_num_threads(settings.torch_threads)
        self.device = device
        self.digest = verify_weights(os.path.join(model_dir, weights_file), os.path.join(model_dir, DIGEST_FILE))
        self.model, config, record = checkpoint.load_checkpoint(os.path.join(model_dir, weights_file), device)
        loaded = time.perf_counter()
        # Explanations need gradients, which the frozen TorchScript copy does not keep: they use the eager network.
        self.eager_model = self.model
        self.optimized = settings.optimize and device.type == "cpu"
        if self.optimized:
            self.model = optimize_for_cpu(self.model)
        compiled = time.perf_counter()
        self.labels = load_labels(model_dir, config.num_classes)
        self.resolution = checkpoint.training_resolution(record)
        self.limits = Limits(len(self.labels), min(settings.topk, len(self.labels)), settings.max_images)
        warm_from = time.perf_counter()
        self.preprocessing_device = self.warm_up()
        self.start_times = StartTimes(loaded - started, compiled - loaded, time.perf_counter() - warm_from)

    def warm_up(self) -> torch.device:
        """One synthetic stroke, as a PNG, through decoding and preprocessing; the device of its output (the GPU on
        a GPU worker: scripts/gpu_check.sh checks it). The fast PNG decoder loads torchvision's image operators on
        first use (seconds on a busy machine), which the first request would otherwise wait for."""
        stroke = np.zeros((28, 28), dtype=np.uint8)
        stroke[6:22, 12:16] = 255
        png = io.BytesIO()
        Image.fromarray(stroke).save(png, format="PNG")
        inputs, _ = preprocess([Request([preprocessing.decode_grey(png.getvalue())], 1)], self.resolution, self.device)
        return inputs.device

    def predict(self, requests: list[Request], timings: dict | None = None) -> list[Prediction | Exception]:
        """A Prediction or a refusal for each request, in order. `timings`, when given, gets "preprocess_s": the
        seconds the batch's preprocessing took."""
        started = time.perf_counter()
        inputs, places = preprocess_batch(requests, self.resolution, self.device)
        if timings is not None:
            timings["preprocess_s"] = time.perf_counter() - started
        answers: list[Prediction | Exception] = list(places)
        answered = [index for index, place in enumerate(places) if isinstance(place, range)]
        if not answered:
            return answers
        probabilities = forward(self.model, inputs.to(self.device)).cpu()
        # One topk and one tolist for the whole batch: per-row torch calls cost more than the model here.
        values, indices = torch.topk(probabilities, max(requests[index].topk for index in answered))
        values, indices = values.tolist(), indices.tolist()
        explained = [index for index in answered if requests[index].explain]
        why = dict(zip(explained, self.explain(inputs, indices, [places[index] for index in explained]))) \
            if explained else {}
        for index in answered:
            rows = places[index]
            answers[index] = Prediction(values[rows.start:rows.stop], indices[rows.start:rows.stop],
                                        probabilities[rows.start:rows.stop], self.labels, why.get(index, []))
        return answers

    def explain(self, inputs: torch.Tensor, indices: list[list[int]], places: list[range]) -> list[list[dict]]:
        """Integrated gradients, in one pass, for the images at `places` and the label each was given: per place,
        one dict per image (what its answer adds)."""
        rows = [row for place in places for row in place]
        selected = inputs[rows]
        targets = torch.tensor([indices[row][0] for row in rows])
        attributions = explanations.integrated_gradients(self.eager_model, selected, targets)
        fields = iter(explanations.explanation_fields(attributions, explanations.model_view(selected)))
        return [[next(fields) for _ in place] for place in places]
