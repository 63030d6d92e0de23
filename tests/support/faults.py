"""Mixed traffic through a gateway while faults are made, every answer checked and every failure kept with its
time (tests/integration/test_faults.py; `make soak` runs the same for longer).

Five kinds of client, each a thread on its own keep-alive connection and its own client address (the gateway's
rate limit is per address): REST with one PNG, REST with a .npy of 8 digits, REST with a body the handler refuses
(the answer must be its 400 with the reason), gRPC Predictions with one PNG, and the Open Inference Protocol (v2)
with a UINT8 pixel tensor. Each sends the credential `Credentials.current` holds at the moment it sends.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np
import requests

from serving.gateways import Gateway
from serving.rpc import client as grpc_client
from tests.support.gateways import client_session
from tests.support.images import npy_bytes, png_bytes

KINDS = ("rest", "rest-npy", "rest-bad", "grpc", "v2")
BAD_BODY, BAD_WORDS = b"the digit seven", "not an image"
TIMEOUT = 30.0  # each client's wait for one answer


@dataclass
class Credentials:
    """The credential clients send now: the test moves them from one to the next."""
    current: str


@dataclass
class Call:
    kind: str
    sent: float  # time.time()
    answered: float
    outcome: str  # "ok", or what went wrong: "HTTP 500 ...", "wrong answer ...", "ReadTimeout", "UNAVAILABLE ..."
    credential: str


@dataclass
class Traffic:
    gateway: Gateway
    credentials: Credentials
    images: np.ndarray  # held-out digits; answers[i] is what the gateway answered for images[i] alone
    labels: list[str]
    pause: float = 0.02  # between one client's calls
    calls: list[Call] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> "Traffic":
        for number, kind in enumerate(KINDS):
            self.threads.append(threading.Thread(target=getattr(self, kind.replace("-", "_")),
                                                 args=(f"127.0.0.{40 + number}",), name=kind, daemon=True))
        for thread in self.threads:
            thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(TIMEOUT + 10)

    # ------------------------------------------------------------ what was sent and how it went
    def record(self, kind: str, sent: float, outcome: str, credential: str) -> None:
        with self.lock:
            self.calls.append(Call(kind, sent, time.time(), outcome, credential))

    def failures(self) -> list[Call]:
        with self.lock:
            return [call for call in self.calls if call.outcome != "ok"]

    def counts(self) -> dict[str, Counter]:
        """{kind: Counter of outcomes}, failures by their first words."""
        result: dict[str, Counter] = {kind: Counter() for kind in KINDS}
        with self.lock:
            for call in self.calls:
                result[call.kind][call.outcome if call.outcome == "ok" else " ".join(call.outcome.split()[:3])] += 1
        return result

    def answered_ok(self, kind: str, after: float) -> bool:
        with self.lock:
            return any(call.kind == kind and call.outcome == "ok" and call.sent > after for call in self.calls)

    # ------------------------------------------------------------ the clients
    def _loop(self, kind: str, send) -> None:
        index = 0
        while not self.stop.wait(self.pause):
            credential = self.credentials.current
            sent = time.time()
            try:
                outcome = send(index, credential)
            except (requests.RequestException, grpc.RpcError, ValueError, KeyError, TypeError) as error:
                outcome = (f"{error.code().name} {error.details()}" if isinstance(error, grpc.RpcError)
                           else f"{type(error).__name__} {error}")
            self.record(kind, sent, outcome, credential)
            index += 1

    def _post(self, session: requests.Session, path: str, body: bytes, credential: str, content_type: str):
        return session.post(f"{self.gateway.rest}{path}", data=body, timeout=TIMEOUT,
                            headers={"Authorization": f"Bearer {credential}", "Content-Type": content_type})

    def rest(self, source: str) -> None:
        bodies = [png_bytes(image) for image in self.images]
        with client_session(source) as session:
            def send(index: int, credential: str) -> str:
                number = index % len(bodies)
                response = self._post(session, "/predictions/digits", bodies[number], credential,
                                      "application/octet-stream")
                if response.status_code != 200:
                    return f"HTTP {response.status_code} {response.text[:200]}"
                label = str(response.json()["label"])
                return "ok" if label == self.labels[number] else f"wrong answer {label} for {self.labels[number]}"
            self._loop("rest", send)

    def rest_npy(self, source: str) -> None:
        group = 8
        with client_session(source) as session:
            def send(index: int, credential: str) -> str:
                start = (index * group) % (len(self.images) - group + 1)
                response = self._post(session, "/predictions/digits", npy_bytes(self.images[start:start + group]),
                                      credential, "application/octet-stream")
                if response.status_code != 200:
                    return f"HTTP {response.status_code} {response.text[:200]}"
                labels = [str(answer["label"]) for answer in response.json()["predictions"]]
                expected = self.labels[start:start + group]
                return "ok" if labels == expected else f"wrong answer {labels} for {expected}"
            self._loop("rest-npy", send)

    def rest_bad(self, source: str) -> None:
        with client_session(source) as session:
            def send(_index: int, credential: str) -> str:
                response = self._post(session, "/predictions/digits", BAD_BODY, credential, "application/octet-stream")
                if response.status_code == 400 and BAD_WORDS in response.json().get("message", ""):
                    return "ok"
                return f"HTTP {response.status_code} {response.text[:200]}"
            self._loop("rest-bad", send)

    def grpc(self, _source: str) -> None:
        bodies = [png_bytes(image) for image in self.images]
        max_request, max_response = grpc_client.message_limits({})
        with grpc_client.open_channel(self.gateway.grpc, max_request, max_response) as channel:
            def send(index: int, credential: str) -> str:
                number = index % len(bodies)
                answer = grpc_client.predict(channel, credential, "digits", None, bodies[number], TIMEOUT)
                label = str(answer.get("label"))
                return "ok" if label == self.labels[number] else f"wrong answer {json.dumps(answer)[:200]}"
            self._loop("grpc", send)

    def v2(self, source: str) -> None:
        with client_session(source) as session:
            def send(index: int, credential: str) -> str:
                number = index % len(self.images)
                image = self.images[number]
                body = json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, *image.shape],
                                               "data": image.reshape(-1).tolist()}]}).encode()
                response = self._post(session, "/v2/models/digits/infer", body, credential, "application/json")
                if response.status_code != 200:
                    return f"HTTP {response.status_code} {response.text[:200]}"
                outputs = {output["name"]: output["data"] for output in response.json()["outputs"]}
                label = str(outputs["labels"][0])
                return "ok" if label == self.labels[number] else f"wrong answer {label} for {self.labels[number]}"
            self._loop("v2", send)
