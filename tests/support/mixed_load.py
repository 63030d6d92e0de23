"""Mixed traffic through a gateway (or a load balancer in front of several) while faults are made, every answer
checked and every call kept with its times and outcome (tests/integration/test_faults.py, test_rolling_restart.py;
`make soak` and `make rolling` run them for longer).

Five kinds of client, each a thread on its own keep-alive connection and its own client address (the gateway's
rate limit is per address): REST with one PNG, REST with a .npy of 8 digits, REST with a body the handler refuses
(the answer must be its 400 with the reason), gRPC Predictions with one PNG, and the Open Inference Protocol (v2)
with a UINT8 pixel tensor. Each sends the credential `Credentials.current` holds at the moment it sends.

An answer is right when it is, for that digit, the answer one model version gives it alone (`answers`: version ->
each digit's REST answer, taken before the load): the same label, ranking and probabilities (to 2e-6: they are
rounded to 6 decimals and a batched forward pass may differ in the last one). Each right answer is attributed to its
version; the 8 answers of a .npy request must all come from one. A v2 answer also names its version, which must be
the one its numbers come from.

With `retry`, a call that failed in a way a careful client retries (the connection failed, 502, 503, gRPC
UNAVAILABLE) is sent once more: the call is recorded with the first outcome and whether the retry was answered right.
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
TOLERANCE = 2e-6
GROUP = 8  # digits per .npy request
TRANSIENT = ("ConnectionError", "HTTP 502", "HTTP 503", "UNAVAILABLE")  # what a careful client sends again


@dataclass
class Credentials:
    """The credential clients send now: the test moves them from one to the next."""
    current: str


@dataclass
class Call:
    kind: str
    sent: float  # time.time()
    answered: float
    outcome: str  # "ok", or what went wrong: "HTTP 500 ...", "wrong answer ...", "ConnectionError ...", "UNAVAILABLE ..."
    credential: str
    version: str | None = None  # the model version whose answer it was
    retried: str | None = None  # with retry, after a transient failure: the retry's outcome


def same_answer(got: dict, expected: dict) -> bool:
    return (str(got.get("label")) == str(expected["label"])
            and [entry["label"] for entry in got.get("topk", [])] == [entry["label"] for entry in expected["topk"]]
            and all(abs(a["probability"] - b["probability"]) <= TOLERANCE
                    for a, b in zip(got["topk"], expected["topk"])))


def rest_answers(gateway: Gateway, credential: str, images: np.ndarray) -> list[dict]:
    """Each digit's REST answer, asked alone."""
    answers = []
    for image in images:
        response = requests.post(f"{gateway.rest}/predictions/digits", data=png_bytes(image), timeout=TIMEOUT,
                                 headers={"Authorization": f"Bearer {credential}"})
        assert response.status_code == 200, response.text
        answers.append(response.json())
    return answers


def v2_pixels_body(image: np.ndarray) -> bytes:
    """An Open Inference Protocol infer request for one digit, as a UINT8 pixel tensor (what the v2 clients send)."""
    return json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, *image.shape],
                                   "data": image.reshape(-1).tolist()}]}).encode()


@dataclass
class Traffic:
    gateway: Gateway
    credentials: Credentials
    images: np.ndarray
    answers: dict[str, list[dict]]  # version -> the REST answer to images[i] alone
    pause: float = 0.02  # between one client's calls
    retry: bool = False
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
    def failures(self) -> list[Call]:
        with self.lock:
            return [call for call in self.calls if call.outcome != "ok"]

    def between(self, began: float, ended: float) -> list[Call]:
        with self.lock:
            return [call for call in self.calls if began <= call.sent <= ended]

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

    # ------------------------------------------------------------ judging an answer
    def version_of(self, answer: dict, number: int) -> str | None:
        """The version whose answer to images[number] this is, or None."""
        for version, answers in self.answers.items():
            if same_answer(answer, answers[number]):
                return version
        return None

    def judge(self, answer: dict, number: int) -> tuple[str, str | None]:
        version = self.version_of(answer, number)
        if version is None:
            return f"wrong answer {json.dumps(answer)[:200]} for digit {number}", None
        return "ok", version

    # ------------------------------------------------------------ the clients
    def _loop(self, kind: str, send) -> None:
        index = 0
        while not self.stop.wait(self.pause):
            credential = self.credentials.current
            sent = time.time()
            outcome, version = self._send(send, index, credential)
            retried = None
            if self.retry and outcome.startswith(TRANSIENT):
                retried, version = self._send(send, index, credential)
            with self.lock:
                self.calls.append(Call(kind, sent, time.time(), outcome, credential, version, retried))
            index += 1

    @staticmethod
    def _send(send, index: int, credential: str) -> tuple[str, str | None]:
        try:
            return send(index, credential)
        except grpc.RpcError as error:
            return f"{error.code().name} {error.details()}", None
        except (requests.RequestException, ValueError, KeyError, TypeError) as error:
            name = "ConnectionError" if isinstance(error, requests.ConnectionError) else type(error).__name__
            return f"{name} {error}", None

    def _post(self, session: requests.Session, path: str, body: bytes, credential: str, content_type: str):
        return session.post(f"{self.gateway.rest}{path}", data=body, timeout=TIMEOUT,
                            headers={"Authorization": f"Bearer {credential}", "Content-Type": content_type})

    def rest(self, source: str) -> None:
        bodies = [png_bytes(image) for image in self.images]
        with client_session(source) as session:
            def send(index: int, credential: str):
                number = index % len(bodies)
                response = self._post(session, "/predictions/digits", bodies[number], credential,
                                      "application/octet-stream")
                if response.status_code != 200:
                    return f"HTTP {response.status_code} {response.text[:200]}", None
                return self.judge(response.json(), number)
            self._loop("rest", send)

    def rest_npy(self, source: str) -> None:
        with client_session(source) as session:
            def send(index: int, credential: str):
                start = (index * GROUP) % (len(self.images) - GROUP + 1)
                response = self._post(session, "/predictions/digits", npy_bytes(self.images[start:start + GROUP]),
                                      credential, "application/octet-stream")
                if response.status_code != 200:
                    return f"HTTP {response.status_code} {response.text[:200]}", None
                judged = [self.judge(answer, start + offset)
                          for offset, answer in enumerate(response.json()["predictions"])]
                versions = {version for _, version in judged}
                if len(judged) != GROUP or None in versions or len(versions) != 1:
                    return f"wrong answer {[outcome for outcome, _ in judged]}", None
                return "ok", versions.pop()
            self._loop("rest-npy", send)

    def rest_bad(self, source: str) -> None:
        with client_session(source) as session:
            def send(_index: int, credential: str):
                response = self._post(session, "/predictions/digits", BAD_BODY, credential, "application/octet-stream")
                if response.status_code == 400 and BAD_WORDS in response.json().get("message", ""):
                    return "ok", None
                return f"HTTP {response.status_code} {response.text[:200]}", None
            self._loop("rest-bad", send)

    def grpc(self, _source: str) -> None:
        bodies = [png_bytes(image) for image in self.images]
        max_request, max_response = grpc_client.message_limits({})
        with grpc_client.open_channel(self.gateway.grpc, max_request, max_response) as channel:
            def send(index: int, credential: str):
                number = index % len(bodies)
                return self.judge(grpc_client.predict(channel, credential, "digits", None, bodies[number], TIMEOUT),
                                  number)
            self._loop("grpc", send)

    def v2(self, source: str) -> None:
        with client_session(source) as session:
            def send(index: int, credential: str):
                number = index % len(self.images)
                response = self._post(session, "/v2/models/digits/infer", v2_pixels_body(self.images[number]),
                                      credential, "application/json")
                if response.status_code != 200:
                    return f"HTTP {response.status_code} {response.text[:200]}", None
                answer = response.json()
                outputs = {output["name"]: output["data"] for output in answer["outputs"]}
                named = str(answer.get("model_version"))
                expected = self.answers.get(named, [None] * len(self.images))[number]
                if expected is None:
                    return f"wrong answer: version {named} is not one of {sorted(self.answers)}", None
                probabilities = outputs["probabilities"]
                right = str(outputs["labels"][0]) == str(expected["label"]) and all(
                    abs(probabilities[int(entry["label"])] - entry["probability"]) <= TOLERANCE
                    for entry in expected["topk"])
                if not right:
                    return f"wrong answer {json.dumps(answer)[:200]} for digit {number} (version {named})", None
                return "ok", named
            self._loop("v2", send)
