"""One request of a batch as handler/digit_handler.py carries it through `handle`: read -> preprocess -> predict ->
format, each step filling in its part or refusing the request.

A record, no logic (the handler's small functions do the work). It lives here and not in digit_handler.py because
TorchServe loads a handler module only if it defines exactly one class: the handler.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from handler.open_inference import InferRequest
from handler.wire import DecodedRequest


@dataclass
class BatchRequest:
    grpc: bool = False  # came over gRPC: its answer is marked final, a v2 refusal travels in band
    explain: bool = False  # asked why the model answered (explanations)
    request_id: str | None = None  # the client's X-Request-Id, echoed in the answer
    v2: bool = False  # came to an Open Inference Protocol path over REST: answered in its shape, errors included
    body: object = None  # the body as read (None when unreadable); a refused v2 request is answered in v2's shape
    infer: InferRequest | None = None  # an Open Inference Protocol request, read
    decoded: DecodedRequest | None = None  # its images, decoded
    refusal: Exception | None = None  # why it is not answered: InputError (400, 413), or a bug (500)
    rows: range = range(0)  # where its images lie in the batch's forward pass
    explanation: list[dict] = field(default_factory=list)  # per image, what an explanation adds to its answer
    answer: dict | None = None
    predicted: list[str] = field(default_factory=list)  # its images' best labels, for the metrics

    @property
    def answered(self) -> bool:
        return self.refusal is None
