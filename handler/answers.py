"""Answers on the wire: a request's Prediction or refusal -> its status and body, in TorchServe's own shape or the
Open Inference Protocol's.

TorchServe's API (REST /predictions and gRPC Predictions), per image:
    {"label", "index", "probability", "topk": [{"label", "index", "probability"}, ...]}
and for many images {"predictions": [one such answer per image, in order]}; an explanation adds "image",
"attributions", "method", "steps" and "baseline" to each. The Open Inference Protocol's answer is
handler/open_inference.py's (outputs "probabilities" and "labels", with an explanation "attributions" and "images").
A refusal's status and body come from the one table of handler/refusals.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from handler import open_inference, refusals
from handler.predictor import Prediction, Request
from handler.wire import Read


@dataclass
class Reply:
    """What a server sends for one request."""

    body: str | bytes
    status: int = 200
    phrase: str | None = None  # the HTTP reason phrase of a refusal
    binary_length: int | None = None  # in the binary tensor data extension: the length of the body's JSON header


def ranked(values: list[float], indices: list[int], labels: list[str]) -> dict:
    """One image's answer from its ranked probabilities and class indices (best first)."""
    entries = [{"label": labels[index], "index": index, "probability": round(value, 6)}
               for value, index in zip(values, indices)]
    return {**entries[0], "topk": entries}


def torchserve_answer(request: Request, prediction: Prediction) -> dict:
    """The answer of TorchServe's own API: one image's, or {"predictions": [...]} for a multi-image request."""
    topk = request.topk
    images = [ranked(values[:topk], indices[:topk], prediction.labels)
              for values, indices in zip(prediction.values, prediction.indices)]
    for answer, fields in zip(images, prediction.explanations):
        answer.update(fields)
    return {"predictions": images} if request.many else images[0]


def v2_answer(infer: open_inference.InferRequest, prediction: Prediction, model_name: str,
              model_version: str) -> dict:
    """The Open Inference Protocol's answer, the outputs the request asked for."""
    explained = prediction.explanations
    return open_inference.format_infer_response(
        infer, model_name, model_version, prediction.probabilities.tolist(), prediction.best,
        [fields["attributions"] for fields in explained] if explained else None,
        [fields["image"] for fields in explained] if explained else None)


def reply(read: Read, outcome: Prediction | Exception, model_name: str, model_version: str,
          in_band: bool = False) -> Reply:
    """A request's reply from what it was read as and what the predictor (or the reader) gave it. `in_band`: a v2
    refusal travels in the body of a status-OK answer (TorchServe's gRPC: open_inference.format_grpc_error)."""
    if isinstance(outcome, Prediction):
        if read.infer is None:
            return Reply(json.dumps(torchserve_answer(read.request, outcome)))
        answer = v2_answer(read.infer, outcome, model_name, model_version)
        if in_band:  # TorchServe's gRPC frontend builds its answer from this JSON: never in binary
            return Reply(json.dumps(answer))
        body, header_length = open_inference.encode_infer_response(read.infer, answer)
        return Reply(body, binary_length=header_length)
    refused = refusals.refusal(outcome)
    if not read.v2:
        body = refused.torchserve_body()
    elif in_band:
        body = open_inference.format_grpc_error(read.request_id, model_name, model_version, refused.status,
                                                refused.message)
    else:
        body = refused.v2_body()
    return Reply(json.dumps(body), refused.status, refused.phrase)
