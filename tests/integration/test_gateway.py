"""The gateway (nginx in front of TorchServe, python -m gateway), on the host and in the container image.

Every test runs against both: `gateway` is parametrized. Clients hold the gateway's credential only; TorchServe's
keys stay inside. Answers the gateway gives itself are JSON in the handler's error shape, and on the Open Inference
Protocol's paths (/v2) in that protocol's ({"error": "..."}).
"""
from __future__ import annotations

import json
import socket
import time

import grpc
import numpy as np
import pytest
import requests

from serving.rpc import client as grpc_client
from tests.support import ROOT
from tests.support.images import photo_png, png_bytes
from tests.support import bad_inputs
from tests.support.gateways import scrape
from tests.support.grpc_calls import refusals

pytestmark = pytest.mark.integration

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def grpc_channel(gateway):
    max_request, max_response = grpc_client.message_limits({})
    with grpc_client.open_channel(gateway.grpc, max_request, max_response) as channel:
        yield channel


def assert_gateway_error(response: requests.Response, code: int, words: str) -> None:
    assert response.status_code == code, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code and words in body["message"], body
    assert set(body) == {"code", "type", "message"}


def assert_v2_error(response: requests.Response, code: int, words: str) -> None:
    """An answer on a /v2 path in the protocol's error shape, what its clients (tritonclient, KServe's SDK) read."""
    assert response.status_code == code, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and words in body["error"], body


def test_health_answers_without_a_credential(gateway):
    live = requests.get(f"{gateway.rest}/healthz/live", timeout=10)
    ready = requests.get(f"{gateway.rest}/healthz/ready", timeout=10)
    assert live.status_code == 200 and ready.status_code == 200
    assert ready.json()["status"] == "Healthy"


def test_predictions_through_the_gateway_equal_the_servers(gateway, server, test_split):
    """The same real test digits, through the gateway and straight to a TorchServe with the same .mar."""
    images, labels = test_split
    for image in images[:40]:
        body = png_bytes(image)
        through = gateway.predict(body)
        direct = requests.post(f"{server.endpoints.inference}/predictions/digits", data=body,
                               headers={**server.auth(), "Content-Type": "application/octet-stream"}, timeout=TIMEOUT)
        assert through.status_code == 200 and direct.status_code == 200
        assert through.json() == direct.json()
    answers = [gateway.predict(png_bytes(image)).json()["label"] for image in images[:40]]
    assert np.mean(np.array(answers, dtype=int) == labels[:40]) >= 0.95


def test_each_request_reaches_torchserve_with_the_gateways_own_id(gateway, test_split):
    """The id gateway.check_answer() holds an answer to: the handler echoes, for each request, the X-Request-Id the
    gateway sent, which is nginx's own per-request id and not the one a client sends (a client could otherwise
    make the gateway take another request's answer as its own, or refuse a good one)."""
    body = png_bytes(test_split[0][0])
    echoed = [gateway.predict(body, headers={"X-Request-Id": "chosen-by-the-client"}).headers["X-Client-Request-Id"]
              for _ in range(3)]
    assert all(len(echo) == 32 and set(echo) <= set("0123456789abcdef") for echo in echoed), echoed
    assert len(set(echoed)) == 3
    assert scrape(gateway)["digits_gateway_stray_answers_total"] == 0


def test_grpc_predictions_through_the_gateway_equal_rest(gateway, grpc_channel, test_split):
    images, _ = test_split
    assert grpc_client.ping(grpc_channel, gateway.credential, TIMEOUT) == "Healthy"
    for image in images[:10]:
        body = png_bytes(image)
        answer = grpc_client.predict(grpc_channel, gateway.credential, "digits", None, body, TIMEOUT)
        assert answer == gateway.predict(body).json()


@pytest.mark.parametrize("credential", [None, "wrong-credential-0123456789"], ids=["missing", "wrong"])
def test_rest_without_the_gateways_credential_is_401(gateway, test_split, credential):
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    response = requests.post(f"{gateway.rest}/predictions/digits", data=png_bytes(test_split[0][0]),
                             headers=headers, timeout=TIMEOUT)
    assert_gateway_error(response, 401, "missing or wrong credential")


def test_torchserves_own_key_is_not_a_gateway_credential(gateway, server, test_split):
    """A TorchServe key (here another server's) opens nothing: clients only ever hold the gateway's credential."""
    response = requests.post(f"{gateway.rest}/predictions/digits", data=png_bytes(test_split[0][0]),
                             headers=server.auth(), timeout=TIMEOUT)
    assert_gateway_error(response, 401, "missing or wrong credential")


@pytest.mark.parametrize("credential", [None, "wrong-credential-0123456789"], ids=["missing", "wrong"])
def test_grpc_without_the_gateways_credential_is_unauthenticated(gateway, grpc_channel, test_split, credential):
    for refused in refusals(grpc_channel, credential, png_bytes(test_split[0][0]), TIMEOUT):
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "missing or wrong credential" in refused.details()


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_methods_other_than_post_are_405(gateway, test_split, method):
    response = requests.request(method, f"{gateway.rest}/predictions/digits", data=png_bytes(test_split[0][7]),
                                headers=gateway.auth(), timeout=TIMEOUT)
    assert_gateway_error(response, 405, "inference takes POST")
    assert response.headers["Allow"] == "POST"


def test_a_body_over_the_limit_is_413_with_a_message(gateway):
    response = gateway.predict(b"\0" * 6_553_501)
    assert_gateway_error(response, 413, "request body over 6553500 bytes")


def chunked(body: bytes, size: int = 65_536):
    """The body as a generator: requests sends it with Transfer-Encoding: chunked, no Content-Length."""
    return (body[start:start + size] for start in range(0, len(body), size))


def test_a_large_photo_of_a_digit_is_answered_with_a_length_or_chunked(gateway, test_split):
    """A 3.3 MB PNG (a photo dropped on the web page) is over nginx's 1 MB memory buffer, so the gateway writes it
    to a file before passing it on: that file must be writable by nginx's workers wherever the gateway runs (on
    the host as root they are `nobody`, and this was a 500)."""
    image, label = test_split[0][7], test_split[1][7]
    body = photo_png(image)
    assert 3_000_000 < len(body) < 6_553_500
    for data in (body, chunked(body)):
        response = gateway.predict(data)
        assert response.status_code == 200, response.text
        assert response.json()["label"] == str(label)


def test_a_chunked_body_over_the_limit_is_413_with_a_message(gateway):
    """No Content-Length to refuse it by: nginx counts the chunks, and refuses at the limit, on every path."""
    too_large = b"\0" * 6_553_501
    assert_gateway_error(gateway.predict(chunked(too_large)), 413, "request body over 6553500 bytes")
    response = requests.post(f"{gateway.rest}/v2/models/digits/infer", data=chunked(too_large),
                             headers=gateway.auth(), timeout=TIMEOUT)
    assert_v2_error(response, 413, "request body over 6553500 bytes")


def test_more_than_the_rate_from_one_address_is_429_and_others_go_on(gateway, test_split):
    """A burst from 127.0.0.3 (loopback, its own client address) past the rate: 429 with a message, while the
    usual client on 127.0.0.1 is still answered."""
    started = time.monotonic()
    statuses, bodies = pipelined_posts(gateway.rest, gateway.rate_burst + 300, source="127.0.0.3")
    seconds = time.monotonic() - started
    # The burst passes (each refused 401 for want of a credential), then 429s until nginx closes the connection:
    # after the first 429 or a few more (whether it keeps the connection depends on the discarded body's timing).
    assert set(statuses) == {401, 429}, statuses[-5:]
    first_refused = statuses.index(429)
    assert first_refused >= gateway.rate_burst and set(statuses[:first_refused]) == {401}, first_refused
    passed = statuses.count(401)
    assert gateway.rate_burst <= passed <= gateway.rate_burst + gateway.rate_limit * seconds + 5, (passed, seconds)
    assert json.loads(bodies[first_refused]) == {"code": 429, "type": "TooManyRequests",
                                     "message": f"over {gateway.rate_limit} requests/s from this address: slow down"}
    assert gateway.predict(png_bytes(test_split[0][7])).json()["label"] == str(test_split[1][7])


@pytest.mark.parametrize("name", sorted(bad_inputs.REFUSED))
def test_bad_input_through_the_gateway_is_the_handlers_400(gateway, test_split, name):
    body = bad_inputs.refused_bodies(test_split[0][0])[name]
    response = gateway.predict(body)
    assert response.status_code == 400, response.text
    assert bad_inputs.REFUSED[name] in response.json()["message"]
    good = gateway.predict(png_bytes(test_split[0][7]))
    assert good.status_code == 200 and good.json()["label"] == str(test_split[1][7])


def test_only_inference_health_and_the_page_are_routed(gateway):
    """TorchServe's other APIs (ping with its key, management, metrics, api-description, the v2 paths beyond the
    protocol's own) are not behind the REST port, whatever the method."""
    for path in ("/ping", "/models", "/api-description", "/metrics", "/token", "/v1/models/digits:predict",
                 "/web/index.html", "/index.htm"):
        for method in ("GET", "POST"):
            response = requests.request(method, f"{gateway.rest}{path}", headers=gateway.auth(), timeout=TIMEOUT)
            assert_gateway_error(response, 404, "no such endpoint")
            assert "/explanations/<model>" in response.json()["message"]
    # Under /v2 the same 404, in the protocol's shape.
    for path in ("/v2/", "/v2/repository/index", "/v2/models/digits/infer/extra", "/v2/models/digits/stats"):
        for method in ("GET", "POST"):
            response = requests.request(method, f"{gateway.rest}{path}", headers=gateway.auth(), timeout=TIMEOUT)
            assert_v2_error(response, 404, "no such endpoint")


WEB = ROOT / "web"
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/index.html": ("index.html", "text/html; charset=utf-8"),
              "/app.js": ("app.js", "text/javascript; charset=utf-8"), "/style.css": ("style.css", "text/css; charset=utf-8")}


@pytest.mark.parametrize("path", sorted(PAGE_FILES))
def test_the_web_page_is_served_with_a_strict_policy(gateway, path):
    """The page's files, byte for byte as in web/, with their types, a CSP that allows this origin's script and
    style only, nosniff, and revalidation (no build step, so no hashed names to cache forever). No credential."""
    name, content_type = PAGE_FILES[path]
    response = requests.get(f"{gateway.rest}{path}", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.content == (WEB / name).read_bytes()
    assert response.headers["Content-Type"] == content_type
    policy = dict(part.strip().split(" ", 1) for part in response.headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-cache" and response.headers["ETag"]
    again = requests.get(f"{gateway.rest}{path}", headers={"If-None-Match": response.headers["ETag"]}, timeout=TIMEOUT)
    assert again.status_code == 304


def test_the_page_takes_get_only(gateway):
    response = requests.post(f"{gateway.rest}/app.js", data=b"x", headers=gateway.auth(), timeout=TIMEOUT)
    assert_gateway_error(response, 405, "this path takes GET")


def test_explanations_are_inference_behind_the_credential(gateway, test_split):
    """POST /explanations/<model>: the same credential, methods and errors as /predictions."""
    body = png_bytes(test_split[0][2])
    url = f"{gateway.rest}/explanations/digits"
    refused = requests.post(url, data=body, headers={"Content-Type": "image/png"}, timeout=TIMEOUT)
    assert_gateway_error(refused, 401, "missing or wrong credential")
    wrong = requests.post(url, data=body, headers=gateway.auth("wrong-credential-0123456789"), timeout=TIMEOUT)
    assert_gateway_error(wrong, 401, "missing or wrong credential")
    answer = requests.post(url, data=body, headers={**gateway.auth(), "Content-Type": "image/png"}, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    explained = answer.json()
    assert explained["label"] == gateway.predict(body).json()["label"] == str(test_split[1][2])
    assert np.array(explained["image"]).shape == (28, 28) and np.array(explained["attributions"]).shape == (28, 28)
    bad = requests.post(url, data=b"not an image", headers=gateway.auth(), timeout=TIMEOUT)
    assert bad.status_code == 400 and bad.json()["message"] == gateway.predict(b"not an image").json()["message"]
    assert_gateway_error(requests.get(url, headers=gateway.auth(), timeout=TIMEOUT), 405, "inference takes POST")


def test_metrics_port_serves_prometheus_text_and_nothing_else(gateway):
    metrics = requests.get(gateway.metrics, timeout=TIMEOUT)
    assert metrics.status_code == 200 and "ts_inference_requests_total" in metrics.text
    assert gateway.credential not in metrics.text
    other = requests.get(gateway.metrics.replace("/metrics", "/predictions/digits"), timeout=TIMEOUT)
    assert other.status_code == 404


def pipelined_posts(base_url: str, count: int, source: str,
                    path: str = "/predictions/digits") -> tuple[list[int], list[bytes]]:
    """`count` POSTs without a credential written at once on one connection from `source` (HTTP/1.1
    pipelining: the gateway reads them faster than any rate): the status and the body of each answer, in order."""
    host, port = base_url.removeprefix("http://").split(":")
    request = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\n\r\nx".encode()
    received = b""
    with socket.create_connection((host, int(port)), timeout=TIMEOUT, source_address=(source, 0)) as connection:
        connection.sendall(request * count)
        while received.count(b"HTTP/1.1 ") < count:
            chunk = connection.recv(1 << 16)
            if not chunk:
                break
            received += chunk
    answers = [answer.partition(b"\r\n\r\n") for answer in received.split(b"HTTP/1.1 ")[1:]]
    return [int(head.split()[0]) for head, _, _ in answers], [body.strip() for _, _, body in answers]


def test_v2_over_the_rate_is_429_in_the_protocols_shape(gateway):
    """The same limit on /v2 (from 127.0.0.4, a client address of its own), refused in the protocol's shape."""
    statuses, bodies = pipelined_posts(gateway.rest, gateway.rate_burst + 300, source="127.0.0.4",
                                       path="/v2/models/digits/infer")
    assert set(statuses) == {401, 429}, statuses[-5:]
    refused = statuses.index(429)
    assert json.loads(bodies[refused]) == {"error": f"over {gateway.rate_limit} requests/s from this address: slow down"}
    assert set(json.loads(bodies[0])) == {"error"}  # the 401s too


def test_a_socket_bound_to_127_0_0_3_is_another_client_address():
    """The 429 test's premise: a socket bound to 127.0.0.3 reaches a 127.0.0.1 listener from that address."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname(), source_address=("127.0.0.3", 0)):
            accepted, peer = listener.accept()
            accepted.close()
    assert peer[0] == "127.0.0.3"


def test_answers_are_json_with_the_right_content_type(gateway, test_split):
    response = gateway.predict(png_bytes(test_split[0][1]))
    assert response.headers["Content-Type"].startswith("application/json")
    assert json.loads(response.text)["label"] == str(test_split[1][1])


def test_metrics_port_adds_the_gateways_own_metrics(gateway, test_split):
    """Answers by protocol and code (the gateway's refusals never reach TorchServe), readiness, key expiry."""
    before = scrape(gateway)
    assert gateway.predict(png_bytes(test_split[0][5])).status_code == 200
    assert requests.post(f"{gateway.rest}/predictions/digits", data=b"x", timeout=TIMEOUT).status_code == 401
    assert requests.get(f"{gateway.rest}/predictions/digits", headers=gateway.auth(), timeout=TIMEOUT).status_code == 405
    assert requests.get(f"{gateway.rest}/healthz/ready", timeout=TIMEOUT).status_code == 200
    after = scrape(gateway)

    def delta(sample: str) -> float:
        return after.get(sample, 0) - before.get(sample, 0)

    assert delta('digits_gateway_requests_total{protocol="rest",code="401"}') == 1
    assert delta('digits_gateway_requests_total{protocol="rest",code="405"}') == 1
    assert delta('digits_gateway_requests_total{protocol="rest",code="200"}') >= 1
    assert delta('digits_gateway_requests_total{protocol="health",code="200"}') >= 1
    assert after["digits_gateway_ready"] == 1 and after["digits_gateway_torchserve_metrics_up"] == 1
    assert after["digits_gateway_key_expiry_timestamp_seconds"] > time.time() + 10
    assert 0 <= after["digits_gateway_inflight"] < 50
    # The handler's metrics come through the same port, sent by each worker every metrics_seconds (1 s).
    def handler_requests(scraped: dict) -> float:
        return sum(value for name, value in scraped.items() if name.startswith("digits_requests_total{"))

    deadline = time.monotonic() + 15
    while handler_requests(after) <= handler_requests(before) and time.monotonic() < deadline:
        time.sleep(0.25)
        after = scrape(gateway)
    assert handler_requests(after) > handler_requests(before)


# TorchServe 0.12.0's REST side of the protocol (ts_open_inference_protocol=true): server metadata, liveness and
# readiness. Model metadata, Triton's model configuration and model readiness: the gateway's own answers
# (TorchServe has them over gRPC only); readiness is TorchServe's /ping.
V2_GET_ANSWERS = {"/v2/health/live": (200, {"live": True}), "/v2/health/ready": (200, {"ready": True}),
                  "/v2": (200, {"name": "Torchserve"}),
                  "/v2/models/digits": (200, {"name": "digits", "platform": "pytorch_torchserve"}),
                  "/v2/models/digits/config": (200, {"name": "digits", "max_batch_size": 0}),
                  "/v2/models/digits/ready": (200, {"status": "Healthy"})}


@pytest.mark.parametrize("path", sorted(V2_GET_ANSWERS))
def test_open_inference_protocol_rest_paths_behind_the_credential(gateway, path):
    """The v2 GET paths through the gateway, with the gateway's credential only; its refusals in v2's shape."""
    assert_v2_error(requests.get(f"{gateway.rest}{path}", timeout=TIMEOUT), 401, "missing or wrong credential")
    response = requests.get(f"{gateway.rest}{path}", headers=gateway.auth(), timeout=TIMEOUT)
    status, fields = V2_GET_ANSWERS[path]
    assert response.status_code == status, response.text
    body = response.json()
    assert {key: body.get(key) for key in fields} == fields, body
    assert_v2_error(requests.post(f"{gateway.rest}{path}", headers=gateway.auth(), timeout=TIMEOUT), 405,
                    "this path takes GET")


def test_the_v2_model_metadata_is_what_the_handler_takes_and_answers(gateway, test_split):
    """The gateway's metadata names the handler's input (a pixel datatype it reads) and its outputs; another model
    name is the protocol's 404."""
    from handler import open_inference

    metadata = requests.get(f"{gateway.rest}/v2/models/digits", headers=gateway.auth(), timeout=TIMEOUT).json()
    [tensor] = metadata["inputs"]
    assert tensor["datatype"] in open_inference.PIXEL_DATATYPES and tensor["shape"] == [-1, 28, 28]
    assert [output["name"] for output in metadata["outputs"]] == [open_inference.PROBABILITIES, open_inference.LABELS]
    images, labels = test_split
    request = {"inputs": [{**tensor, "shape": [2, 28, 28], "data": images[:2].reshape(-1).tolist()}]}
    answer = requests.post(f"{gateway.rest}/v2/models/digits/infer", json=request, headers=gateway.auth(),
                           timeout=TIMEOUT).json()
    shapes = {output["name"]: output["shape"] for output in answer["outputs"]}
    assert shapes == {"probabilities": [2, metadata["outputs"][0]["shape"][1]], "labels": [2]}
    assert answer["outputs"][1]["data"] == [str(label) for label in labels[:2]]
    for path in ("/v2/models/other", "/v2/models/other/config", "/v2/models/other/ready"):
        assert_v2_error(requests.get(f"{gateway.rest}{path}", headers=gateway.auth(), timeout=TIMEOUT), 404,
                        "no such model here: digits is served")


BINARY_HEADER = b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 9}}]}'
# Malformed v2 requests through the gateway: each refused in the protocol's shape with its own status, the
# request after it answered.
V2_REFUSALS = [
    ("unparseable JSON", {"data": b'{"inputs": [', "headers": {"Content-Type": "application/json"}}, 400,
     "invalid JSON"),
    ("not a v2 request", {"json": {"data": "aGk="}}, 400, 'a JSON object with "inputs"'),
    ("a bad image", {"json": {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]}},
     400, "image 0: not an image"),
    ("too many images", {"json": {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [257, 28, 28],
                                              "data": [0] * (257 * 784)}]}}, 413, "the limit is 256"),
    ("a bad binary layout", {"data": BINARY_HEADER + b"\x05\x00\x00\x00ab",
                             "headers": {"Inference-Header-Content-Length": str(len(BINARY_HEADER))}},
     400, "binary_data_size is 9, but 6 bytes follow"),
    # TorchServe's own refusals (its {"code", "type", "message"}), rewritten by the gateway into the protocol's shape
    ("no such model", {"json": {"inputs": []}, "model": "nosuch"}, 404, "Model not found: nosuch"),
    ("a version", {"json": {"inputs": []}, "model": "digits/versions/1.0"}, 501, "versioning is not yet supported"),
]


@pytest.mark.parametrize("name, request_, status, words", V2_REFUSALS, ids=[case[0] for case in V2_REFUSALS])
def test_a_malformed_v2_request_gets_the_protocols_error(gateway, test_split, name, request_, status, words):
    request_ = dict(request_)
    model = request_.pop("model", "digits")
    headers = {**gateway.auth(), **request_.pop("headers", {})}
    response = requests.post(f"{gateway.rest}/v2/models/{model}/infer", headers=headers, timeout=TIMEOUT, **request_)
    assert_v2_error(response, status, words)
    good = {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 28, 28],
                        "data": test_split[0][7].reshape(-1).tolist()}]}
    answer = requests.post(f"{gateway.rest}/v2/models/digits/infer", json=good, headers=gateway.auth(),
                           timeout=TIMEOUT).json()
    assert answer["outputs"][1]["data"] == [str(test_split[1][7])]


def test_a_v2_body_over_the_limit_is_413_in_the_protocols_shape(gateway):
    url = f"{gateway.rest}/v2/models/digits/infer"
    assert_v2_error(requests.post(url, data=b"\0" * 6_553_501, headers=gateway.auth(), timeout=TIMEOUT), 413,
                    "request body over 6553500 bytes")


def test_open_inference_protocol_infer_through_the_gateway(gateway, test_split):
    images, labels = test_split
    request = {"id": "gateway-test", "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [3, 28, 28],
                                                 "data": images[:3].reshape(-1).tolist()}]}
    url = f"{gateway.rest}/v2/models/digits/infer"
    assert_v2_error(requests.post(url, json=request, timeout=TIMEOUT), 401, "missing or wrong credential")
    response = requests.post(url, json=request, headers=gateway.auth(), timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    assert outputs["labels"]["data"] == [str(label) for label in labels[:3]]
    assert_v2_error(requests.get(url, headers=gateway.auth(), timeout=TIMEOUT), 405, "inference takes POST")


def test_open_inference_protocol_grpc_service_is_passed(gateway, grpc_channel):
    """The gateway's gRPC server passes inference.GRPCInferenceService like TorchServe's own service: refused
    without the credential, answered by TorchServe with it (ServerLive: live=true, b'\\x08\\x01' on the wire)."""
    server_live = grpc_channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
    with pytest.raises(grpc.RpcError) as refused:
        server_live(b"", timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert server_live(b"", metadata=[("authorization", f"Bearer {gateway.credential}")], timeout=TIMEOUT) == b"\x08\x01"
