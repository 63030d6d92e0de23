"""Against a real TorchServe: a freshly built .mar, real sockets, token authorization on."""
from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from serving.management import api_for
from tests.support import ROOT
from tests.support.images import npy_bytes, png_bytes
from tests.support import bad_inputs
from tests.support.archives import BATCH_MODEL
from tests.support.servers import settled_logs, wait_for_log
from tests.support.tolerances import ACCURACY_FLOOR

pytestmark = pytest.mark.integration


def predict(server, body: bytes | str, model: str = "digits", headers: dict | None = None, **kwargs):
    return requests.post(
        f"{server.endpoints.inference}/predictions/{model}",
        data=body,
        headers={**server.auth(), "Content-Type": "application/octet-stream", **(headers or {})},
        timeout=30,
        **kwargs,
    )


def test_ping_with_token(server):
    response = requests.get(f"{server.endpoints.inference}/ping", headers=server.auth(), timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "Healthy"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"}], ids=["missing", "wrong"])
def test_requests_without_the_right_token_are_refused(server, test_split, headers):
    scan = png_bytes(test_split[0][0])
    refused = [
        requests.post(f"{server.endpoints.inference}/predictions/digits", data=scan, headers=headers, timeout=10),
        requests.get(f"{server.endpoints.inference}/ping", headers=headers, timeout=10),
        requests.get(f"{server.endpoints.management}/models", headers=headers, timeout=10),
    ]
    for response in refused:
        assert response.status_code in (400, 401)
        assert response.json()["type"] == "InvalidKeyException"


def test_inference_token_does_not_open_the_management_api(server):
    response = requests.get(f"{server.endpoints.management}/models", headers=server.auth("inference"), timeout=10)
    assert response.status_code in (400, 401)
    assert response.json()["type"] == "InvalidKeyException"  # refused for the key, not for another reason


def test_test_split_accuracy_over_rest_matches_training_metrics(server, test_split, metrics):
    """All 750 held-out real MNIST digits, sent as PNGs: the server reproduces train.py's test accuracy exactly."""
    images, labels = test_split
    with requests.Session() as session, ThreadPoolExecutor(8) as pool:
        def call(image):
            return session.post(
                f"{server.endpoints.inference}/predictions/digits", data=png_bytes(image), headers=server.auth(), timeout=30
            )

        responses = list(pool.map(call, images))
    assert [response.status_code for response in responses] == [200] * len(images)
    predicted = np.array([int(response.json()["label"]) for response in responses])
    accuracy = float((predicted == labels).mean())
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert accuracy >= ACCURACY_FLOOR


def test_json_multipart_and_pixel_requests(server, test_split):
    images, labels = test_split
    scan = png_bytes(images[3])
    as_json = requests.post(
        f"{server.endpoints.inference}/predictions/digits",
        json={"data": base64.b64encode(scan).decode(), "topk": 5},
        headers=server.auth(),
        timeout=30,
    )
    multipart = requests.post(
        f"{server.endpoints.inference}/predictions/digits", files={"data": ("digit.png", scan)}, headers=server.auth(), timeout=30
    )
    raw = predict(server, scan)
    for response in (as_json, multipart, raw):
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json()["label"] == str(labels[3])
    assert len(as_json.json()["topk"]) == 5 and len(raw.json()["topk"]) == 3
    assert as_json.json()["topk"][:3] == raw.json()["topk"]


def assert_worker_answers_correctly(server, test_split, index: int = 7) -> None:
    images, labels = test_split
    good = predict(server, png_bytes(images[index]))
    assert good.status_code == 200 and good.json()["label"] == str(labels[index])


@pytest.mark.parametrize("name", list(bad_inputs.REFUSED))
def test_bad_input_gets_400_with_json_and_the_worker_survives(server, test_split, name):
    body = bad_inputs.refused_bodies(test_split[0][0])[name]
    pids_before = sorted(server.worker_pids("digits"))
    response = predict(server, body)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["code"] == 400 and answer["type"] == "InputError"
    assert bad_inputs.REFUSED[name] in answer["message"], answer
    assert_worker_answers_correctly(server, test_split)
    assert sorted(server.worker_pids("digits")) == pids_before


def test_good_and_bad_requests_in_one_batch(server, test_split):
    """8 concurrent requests (4 bad) on a 1-worker model with batchSize 8: one batch, the good ones answered."""
    images, labels = test_split
    names = ["random bytes", "truncated png", "json not an object", "pixels of the wrong shape"]
    refused = bad_inputs.refused_bodies(images[0])
    bodies, expected = [], []
    for index in range(8):
        if index % 2:
            bodies.append(refused[names[index // 2]])
            expected.append(None)
        else:
            bodies.append(png_bytes(images[index]))
            expected.append(str(labels[index]))
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda body: predict(server, body, model=BATCH_MODEL), bodies))
    statuses_by_batch = {}
    for response in responses:
        statuses_by_batch.setdefault(response.headers["X-Batch-Id"], set()).add(response.status_code)
    assert any(statuses == {200, 400} for statuses in statuses_by_batch.values()), statuses_by_batch  # one batch
    for response in responses:
        assert int(response.headers["X-Batch-Size"]) == sum(
            other.headers["X-Batch-Id"] == response.headers["X-Batch-Id"] for other in responses)
    for response, label in zip(responses, expected):
        if label is None:
            assert response.status_code == 400 and response.json()["type"] == "InputError"
        else:
            assert response.status_code == 200 and response.json()["label"] == label


def test_unknown_model_is_404_naming_it(server, test_split):
    response = predict(server, png_bytes(test_split[0][0]), model="no-such-model")
    assert response.status_code == 404
    assert response.json() == {"code": 404, "type": "ModelNotFoundException",
                               "message": "Model not found: no-such-model"}


def test_wrong_http_methods(server, test_split):
    """The management API refuses a wrong method with 405. TorchServe routes every method on /predictions to the
    worker (which cannot see the method): without a body that is a 400 saying to POST; PUT with an image is
    answered like POST (a documented deviation: a gateway can restrict methods, see SECURITY.md)."""
    pids = sorted(server.worker_pids("digits"))
    for method in ("GET", "DELETE", "PATCH"):
        response = requests.request(method, f"{server.endpoints.inference}/predictions/digits", headers=server.auth(),
                                    timeout=30)
        assert response.status_code == 400, (method, response.text)
        assert response.json()["message"].startswith("empty body: POST an image"), method
    for method in ("POST", "PATCH"):
        response = requests.request(method, f"{server.endpoints.management}/models/digits",
                                    headers=server.auth("management"), timeout=30)
        assert response.status_code == 405, (method, response.text)
        assert response.json()["type"] == "MethodNotAllowedException"
    put = requests.put(f"{server.endpoints.inference}/predictions/digits", data=png_bytes(test_split[0][7]),
                       headers={**server.auth(), "Content-Type": "application/octet-stream"}, timeout=30)
    assert put.status_code == 200 and put.json()["label"] == str(test_split[1][7])
    assert sorted(server.worker_pids("digits")) == pids


def test_model_registration_api_is_off(server):
    response = requests.post(
        f"{server.endpoints.management}/models", params={"url": "digits.mar"}, headers=server.auth("management"), timeout=10
    )
    assert response.status_code == 405
    assert response.json()["type"] == "MethodNotAllowedException", response.text  # the model API is off, not a bad call


def test_describe_shows_the_shipped_model_config(server):
    import yaml

    shipped = yaml.safe_load((ROOT / "handler" / "model-config.yaml").read_text())
    description = api_for(server.endpoints).describe("digits")[0]
    for key in ("batchSize", "maxBatchDelay", "minWorkers", "maxWorkers", "responseTimeout"):
        assert description[key] == shipped[key], key
    assert len(description["workers"]) == shipped["minWorkers"]


def test_workers_run_the_archives_code_not_the_checkouts(server):
    """Every worker logs, once at start, the files its network, checkpoint reader, preprocessing and request reading
    were imported from: all must lie in the copy of the .mar that TorchServe extracted (models/<id>/ under the
    server's temp dir), none in this checkout, which a stray path entry could otherwise put first."""
    assert not wait_for_log(server, ["digit model loaded on"], timeout=30)
    extracted = Path(server.env["TEMP"]).resolve() / "models"
    lines = [line for line in settled_logs(server)["model_log.log"].splitlines() if "digit model loaded on" in line]
    assert len(lines) >= 3, lines  # digits' two workers and digits_batch's one
    for line in lines:
        files = [Path(name) for name in line.rstrip().rpartition(") from ")[2].split(", ")]
        assert [file.parts[-2:] for file in files] == [("model", "digit_cnn.py"), ("model", "checkpoint.py"),
                                                       ("model", "preprocessing.py"), ("handler", "predictor.py"),
                                                       ("handler", "wire.py")], line
        for file in files:
            assert file.is_relative_to(extracted) and not file.is_relative_to(ROOT.resolve()), line
            assert file.is_file(), line


def test_requests_write_no_log_lines(server, test_split):
    """Per-request logging costs throughput and disk: 50 requests must not add lines to any log file (counted once
    the asynchronous logging has settled, so a late line is not missed)."""
    def lines() -> int:
        return sum(len(text.splitlines()) for text in settled_logs(server).values())

    before = lines()
    for image in test_split[0][:50]:
        assert predict(server, png_bytes(image)).status_code == 200
    assert lines() - before == 0


def test_a_json_pixel_array_is_answered(server, test_split):
    """{"pixels": 28x28 values 0-255}, white digit on black, as MNIST stores it: the same answer as its PNG."""
    images, labels = test_split
    for image, label in zip(images[:5], labels[:5]):
        response = predict(server, json.dumps({"pixels": image.astype(int).tolist(), "topk": 2}),
                           headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["label"] == str(label) and len(answer["topk"]) == 2
        assert answer["label"] == predict(server, png_bytes(image)).json()["label"]


def test_many_images_in_one_request_are_answered_in_order(server, test_split):
    """A .npy of frames and a JSON list of PNGs: one answer per image, in order, equal to one-by-one answers."""
    from model import preprocessing

    images, labels = test_split
    frames = np.stack([np.rint(preprocessing.to_mnist_geometry(image / 255.0) * 255) for image in images[:50]])
    response = predict(server, npy_bytes(frames.astype(np.uint8)))
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    assert len(answers) == 50 and sum(a["label"] == str(b) for a, b in zip(answers, labels[:50])) >= 48

    listed = [base64.b64encode(png_bytes(image)).decode() for image in images[50:60]]
    response = predict(server, json.dumps({"images": listed, "topk": 1}), headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    together = response.json()["predictions"]
    one_by_one = [predict(server, png_bytes(image)).json() for image in images[50:60]]
    assert [a["label"] for a in together] == [b["label"] for b in one_by_one]
    assert all(len(a["topk"]) == 1 for a in together)


def test_too_many_images_get_413_and_bad_ones_a_400_naming_the_image(server, test_split):
    pids = sorted(server.worker_pids("digits"))
    too_many = predict(server, npy_bytes(np.zeros((257, 28, 28), np.uint8)))
    assert too_many.status_code == 413
    assert too_many.json() == {"code": 413, "type": "InputTooLarge",
                               "message": "257 images in one request; the limit is 256"}
    listed = [base64.b64encode(png_bytes(test_split[0][0])).decode(), "not base64!"]
    bad = predict(server, json.dumps({"images": listed}), headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["message"] == "image 1: not valid base64"
    assert sorted(server.worker_pids("digits")) == pids


def test_a_body_over_max_request_size_gets_413_from_the_frontend(server, test_split):
    """Refused by TorchServe's HTTP layer (Netty) before any worker sees it: 413 with an empty body (the frontend
    writes none; documented in docs/serving.md "Bad input, crashes and long runs"), and the workers go on answering."""
    from serving.config import effective_properties

    limit = int(effective_properties(environ=server.env)["max_request_size"])
    pids = sorted(server.worker_pids("digits"))
    too_big = predict(server, b"\0" * (limit + 1))
    assert too_big.status_code == 413
    just_fits = predict(server, b"\0" * limit)
    assert just_fits.status_code == 400 and just_fits.json()["message"].startswith("not an image")
    assert_worker_answers_correctly(server, test_split)
    assert sorted(server.worker_pids("digits")) == pids


def test_odd_but_valid_images_are_answered_and_the_worker_survives(server, test_split):
    images, labels = test_split
    pids = sorted(server.worker_pids("digits"))
    assert predict(server, png_bytes(images[3])).json()["label"] == str(labels[3])
    for name, body in bad_inputs.accepted_bodies(images[3]).items():
        response = predict(server, body)
        assert response.status_code == 200, (name, response.text)
        answer = response.json()
        assert answer["label"] == str(labels[3]) and len(answer["topk"]) == 3, (name, answer)  # the digit made
    assert sorted(server.worker_pids("digits")) == pids
