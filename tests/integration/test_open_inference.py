"""Explanations and the Open Inference Protocol (KServe v2) against a real TorchServe, token auth on.

Interoperability is proven with KServe's own Python SDK (InferenceRESTClient, InferenceGRPCClient) and NVIDIA's
tritonclient (HTTP, its defaults: binary tensor data), each run from its own virtualenv (tests/support/kserve_client.py,
tests/support/triton_client.py); the rest with plain HTTP and the bundle's gRPC client.
"""
from __future__ import annotations

import base64
import json
import subprocess

import grpc
import numpy as np
import pytest
import requests

from serving.rpc import client as grpc_client
from tests.support import ROOT
from tests.support.images import png_bytes
from tests.support import bad_inputs

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"


@pytest.fixture(scope="session")
def kserve_python():
    """KServe's SDK in .venv-kserve (`make test` builds it first; made here when pytest is run on its own)."""
    if not (KSERVE_PYTHON.parent.parent / ".installed").exists():
        subprocess.run(["make", "-s", "kserve-client"], cwd=ROOT, check=True)
    return KSERVE_PYTHON


@pytest.fixture(scope="session")
def triton_python():
    """tritonclient in .venv-triton (`make test` builds it first; made here when pytest is run on its own)."""
    if not (TRITON_PYTHON.parent.parent / ".installed").exists():
        subprocess.run(["make", "-s", "triton-client"], cwd=ROOT, check=True)
    return TRITON_PYTHON


def own_answers(server, images) -> list[dict]:
    """TorchServe's own API, all ten probabilities: what the v2 answers must equal."""
    body = {"images": [base64.b64encode(png_bytes(image)).decode() for image in images], "topk": 10}
    response = requests.post(f"{server.endpoints.inference}/predictions/digits", json=body, headers=server.auth(),
                             timeout=TIMEOUT)
    response.raise_for_status()
    return response.json()["predictions"]


def probabilities_of(answer: dict) -> np.ndarray:
    row = np.zeros(10)
    for ranked in answer["topk"]:
        row[ranked["index"]] = ranked["probability"]
    return row


def run_client(python, script: str, tmp_path, test_split, **case) -> dict:
    """A third-party client's script (tests/support/<script>) in its own venv, on a case file: the addresses and
    token in `case`, plus 8 PNG images, 4 pixel frames and one bad image; what it made of the answers, as JSON."""
    images, _ = test_split
    case.update(model="digits", images=[base64.b64encode(png_bytes(image)).decode() for image in images[:8]],
                frames=images[8:12].tolist(), bad=base64.b64encode(b"the digit seven").decode())
    path = tmp_path / f"{script}.json"
    path.write_text(json.dumps(case))
    run = subprocess.run([str(python), str(ROOT / "tests" / "support" / script), str(path)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def run_kserve_client(kserve_python, tmp_path, rest: str, grpc_target: str, token: str, test_split) -> dict:
    return run_client(kserve_python, "kserve_client.py", tmp_path, test_split, rest=rest, grpc=grpc_target,
                      token=token)


def check_kserve_answers(transport: dict, request_id: str, expected: np.ndarray, labels, label_text) -> None:
    """What KServe's SDK made of the v2 answers: the same probabilities as TorchServe's own API, right labels.
    `label_text` turns a BYTES element as the transport delivers it into the label."""
    answer = transport["images"]
    assert answer["id"] == request_id and answer["model_name"] == "digits"
    probabilities = answer["outputs"]["probabilities"]
    assert probabilities["shape"] == [8, 10] and probabilities["datatype"] == "FP32"
    assert np.allclose(np.asarray(probabilities["data"]).reshape(8, 10), expected, atol=2e-6)
    predicted = [label_text(item) for item in answer["outputs"]["labels"]["data"]]
    assert predicted == [str(index) for index in expected.argmax(axis=1)]
    assert sum(a == str(b) for a, b in zip(predicted, labels[:8])) >= 7, (predicted, labels[:8])
    pixels = [label_text(item) for item in transport["pixels"]["outputs"]["labels"]["data"]]
    assert sum(a == str(b) for a, b in zip(pixels, labels[8:12])) >= 3, (pixels, labels[8:12])


def test_kserve_sdk_over_rest(server, kserve_python, test_split, tmp_path):
    result = run_kserve_client(kserve_python, tmp_path, server.endpoints.inference, "", server.inference_token,
                               test_split)["rest"]
    expected = np.stack([probabilities_of(answer) for answer in own_answers(server, test_split[0][:8])])
    assert result["live"] is True and result["ready"] is True
    check_kserve_answers(result, "rest-1", expected, test_split[1], str)
    # A bad image: the SDK raises its HTTP error carrying the protocol's error body.
    bad = result["bad"]
    assert bad["raised"] and bad["status"] == 400 and set(bad["body"]) == {"error"}
    assert "image 0: not an image" in bad["body"]["error"] and "image 0: not an image" in bad["message"]


def test_standard_v2_grpc_clients_do_not_find_torchserves_service(server, kserve_python, test_split, tmp_path):
    """TorchServe 0.12.0 names its v2 gRPC service org.pytorch.serve.grpc.openinference.GRPCInferenceService; the
    protocol (and every KServe or Triton client) calls inference.GRPCInferenceService. Straight to TorchServe the
    SDK meets UNIMPLEMENTED; the gateway maps the name (test_kserve_sdk_over_grpc_through_the_gateway)."""
    result = run_kserve_client(kserve_python, tmp_path, "", server.endpoints.grpc_inference, server.inference_token,
                               test_split)["grpc"]
    assert result["failed"] == "UNIMPLEMENTED" and "inference.GRPCInferenceService" in result["details"]


def oip_stub(channel):
    from serving.rpc.stubs import open_inference_grpc_pb2_grpc

    return open_inference_grpc_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_v2_grpc_with_torchserves_own_proto(server, test_split):
    """ModelInfer with the stubs of TorchServe's own proto (serving/rpc/stubs): typed contents in, typed out."""
    from serving.rpc.stubs import open_inference_grpc_pb2 as pb

    images, labels = test_split
    metadata = grpc_client.auth_metadata(server.inference_token)
    expected = np.stack([probabilities_of(answer) for answer in own_answers(server, images[:4])])
    max_request, max_response = grpc_client.message_limits({})
    with grpc_client.open_channel(server.endpoints.grpc_inference, max_request, max_response) as channel:
        stub = oip_stub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), metadata=metadata, timeout=TIMEOUT).live
        assert stub.ModelReady(pb.ModelReadyRequest(name="digits"), metadata=metadata, timeout=TIMEOUT).ready
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="images", datatype="BYTES", shape=[4],
            contents=pb.InferTensorContents(bytes_contents=[png_bytes(image) for image in images[:4]]))
        reply = stub.ModelInfer(pb.ModelInferRequest(model_name="digits", id="own-1", inputs=[tensor]),
                                metadata=metadata, timeout=TIMEOUT)
        outputs = {output.name: output for output in reply.outputs}
        assert reply.id == "own-1" and reply.model_version == "1.0"
        assert list(outputs["probabilities"].shape) == [4, 10]
        assert np.allclose(np.asarray(outputs["probabilities"].contents.fp32_contents).reshape(4, 10), expected,
                           atol=2e-6)
        # TorchServe writes each BYTES element as JSON text: a label arrives in quotes.
        assert [json.loads(item) for item in outputs["labels"].contents.bytes_contents] == \
            [str(index) for index in expected.argmax(axis=1)]
        pixels = pb.ModelInferRequest.InferInputTensor(
            name="pixels", datatype="UINT8", shape=[2, 28, 28],
            contents=pb.InferTensorContents(uint_contents=images[4:6].reshape(-1).tolist()))
        reply = stub.ModelInfer(pb.ModelInferRequest(model_name="digits", inputs=[pixels]), metadata=metadata,
                                timeout=TIMEOUT)
        best = [json.loads(item) for item in {o.name: o for o in reply.outputs}["labels"].contents.bytes_contents]
        assert best == [str(label) for label in labels[4:6]]
        # A refused request: status OK (TorchServe cannot fail one request of a batch over gRPC), an "error" output.
        bad = pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1],
                                                    contents=pb.InferTensorContents(bytes_contents=[b"junk"]))
        reply = stub.ModelInfer(pb.ModelInferRequest(model_name="digits", id="bad-1", inputs=[bad]),
                                metadata=metadata, timeout=TIMEOUT)
        assert reply.id == "bad-1" and [output.name for output in reply.outputs] == ["error"]
        error = json.loads(reply.outputs[0].contents.bytes_contents[0])
        assert error["code"] == 400 and "image 0: not an image" in error["error"]
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(pb.ModelInferRequest(model_name="digits", inputs=[tensor]),
                            metadata=grpc_client.auth_metadata("wrong"), timeout=TIMEOUT)
        assert refused.value.code() in grpc_client.TOKEN_CODES


def v2(server, path: str, **kwargs) -> requests.Response:
    return requests.request(kwargs.pop("method", "POST"), f"{server.endpoints.inference}/v2{path}", timeout=TIMEOUT,
                            **kwargs)


def test_v2_rest_with_plain_http(server, test_split):
    image, label = test_split[0][3], test_split[1][3]
    assert v2(server, "/health/live", method="GET", headers=server.auth()).json() == {"live": True}
    assert v2(server, "/health/ready", method="GET", headers=server.auth()).json() == {"ready": True}
    request = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                           "data": [base64.b64encode(png_bytes(image)).decode()]}]}
    assert v2(server, "/models/digits/infer", json=request).status_code in (400, 401)  # no token: refused
    response = v2(server, "/models/digits/infer", json=request, headers=server.auth())
    assert response.status_code == 200
    outputs = {tensor["name"]: tensor for tensor in response.json()["outputs"]}
    assert outputs["labels"]["data"] == [str(label)]
    # Explain over v2: the same outputs plus attributions and the image the model saw.
    response = v2(server, "/models/digits/explain", json=request, headers=server.auth())
    assert response.status_code == 200
    outputs = {tensor["name"]: tensor for tensor in response.json()["outputs"]}
    assert outputs["labels"]["data"] == [str(label)]
    assert outputs["attributions"]["shape"] == [1, 28, 28] and len(outputs["images"]["data"]) == 784
    # Invalid JSON (the handler cannot tell it was meant as v2): TorchServe's own error shape, 400.
    response = v2(server, "/models/digits/infer", data=b'{"inputs": [', headers={**server.auth(),
                                                                              "Content-Type": "application/json"})
    assert response.status_code == 400


def explain(server, data: bytes) -> requests.Response:
    return requests.post(f"{server.endpoints.inference}/explanations/digits", data=data,
                         headers={**server.auth(), "Content-Type": "application/octet-stream"}, timeout=TIMEOUT)


def test_explanations_over_rest_and_grpc(server, test_split):
    images, labels = test_split
    for image, label in zip(images[:5], labels[:5]):
        answer = explain(server, png_bytes(image)).json()
        assert answer["label"] == str(label) or answer["topk"][1]["label"] == str(label)
        seen, attributions = np.asarray(answer["image"]), np.asarray(answer["attributions"])
        assert seen.shape == attributions.shape == (28, 28) and answer["method"] == "integrated_gradients"
        positive = np.clip(attributions, 0, None)
        assert positive.sum() > 0 and positive[seen > 0.2].sum() > 0.8 * positive.sum()
    max_request, max_response = grpc_client.message_limits({})
    with grpc_client.open_channel(server.endpoints.grpc_inference, max_request, max_response) as channel:
        over_grpc = grpc_client.predict(channel, server.inference_token, "digits", None, png_bytes(images[0]),
                                        TIMEOUT, explain=True)
        plain = grpc_client.predict(channel, server.inference_token, "digits", None, png_bytes(images[0]), TIMEOUT)
    rest = explain(server, png_bytes(images[0])).json()
    assert over_grpc["label"] == rest["label"] and "attributions" not in plain
    assert np.allclose(over_grpc["attributions"], rest["attributions"], atol=1e-5)


@pytest.mark.parametrize("name", sorted(bad_inputs.REFUSED))
def test_explanations_refuse_the_bad_input_matrix_like_predictions(server, test_split, name):
    body = bad_inputs.refused_bodies(test_split[0][0])[name]
    explained = explain(server, body)
    predicted = requests.post(f"{server.endpoints.inference}/predictions/digits", data=body,
                              headers={**server.auth(), "Content-Type": "application/octet-stream"}, timeout=TIMEOUT)
    assert explained.status_code == predicted.status_code and explained.status_code in (400, 413)
    assert explained.json() == predicted.json() and bad_inputs.REFUSED[name] in explained.json()["message"]


def test_the_worker_survives_a_burst_of_bad_v2_requests(server, test_split):
    """Bad v2 requests cost themselves only: afterwards the same workers answer, none restarted."""
    before = server.worker_pids("digits")
    for request in ({"inputs": "x"}, {"inputs": [{"name": "x", "datatype": "FP16", "shape": [1], "data": [1]}]},
                    {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [9999, 28, 28], "data": []}]}):
        response = v2(server, "/models/digits/infer", json=request, headers=server.auth())
        assert response.status_code in (400, 413) and set(response.json()) == {"error"}
    ok = v2(server, "/models/digits/infer", headers=server.auth(), json={"inputs": [
        {"name": "x", "datatype": "UINT8", "shape": [28, 28], "data": test_split[0][0].reshape(-1).tolist()}]})
    assert ok.status_code == 200 and server.worker_pids("digits") == before



def test_kserve_sdk_over_rest_and_grpc_through_the_gateway(gateway, server, kserve_python, test_split, tmp_path):
    """The gateway speaks the protocol's own gRPC service name (it maps inference.GRPCInferenceService to
    TorchServe's) and routes /v2 over REST: KServe's SDK works over both with the gateway's credential."""
    result = run_kserve_client(kserve_python, tmp_path, gateway.rest, gateway.grpc, gateway.credential, test_split)
    expected = np.stack([probabilities_of(answer) for answer in own_answers(server, test_split[0][:8])])
    rest, grpc_ = result["rest"], result["grpc"]
    assert "failed" not in grpc_, grpc_
    assert rest["live"] is True and rest["ready"] is True
    assert grpc_["live"] is True and grpc_["ready"] is True and grpc_["model_ready"] is True
    check_kserve_answers(rest, "rest-1", expected, test_split[1], str)
    # Over gRPC TorchServe writes BYTES elements as JSON text: a label arrives in quotes.
    check_kserve_answers(grpc_, "grpc-1", expected, test_split[1], json.loads)
    # TorchServe's v2 gRPC frontend passes the handler id, model name and inputs only, never the request's "outputs":
    # over gRPC every output comes back (over REST the same request gets only those it names).
    assert set(grpc_["pixels"]["outputs"]) == {"labels", "probabilities"}
    assert rest["bad"]["status"] == 400 and "image 0: not an image" in rest["bad"]["body"]["error"]
    error = json.loads(grpc_["bad"]["outputs"]["error"]["data"][0])
    assert error["code"] == 400 and "image 0: not an image" in error["error"]
    # Without the gateway's credential (here: a wrong one) the call is refused before it reaches TorchServe.
    assert grpc_["wrong_token"]["raised"] and grpc_["wrong_token"]["code"] == "UNAUTHENTICATED"


def run_triton_client(triton_python, tmp_path, rest: str, token: str, test_split, grpc_target: str = "") -> dict:
    return run_client(triton_python, "triton_client.py", tmp_path, test_split, url=rest.removeprefix("http://"),
                      grpc=grpc_target, token=token)


def check_triton_answers(result: dict, expected: np.ndarray, labels) -> None:
    """What tritonclient made of the answers, with its defaults (binary tensor data both ways): TorchServe's own
    API's probabilities (`expected`, the first 8 images), right labels; the same for pixels, JSON tensors where the
    call asked for them; a bad image and too many images refused with the handler's message and status."""
    assert result["live"] is True
    images = result["images"]
    assert images["id"] == "triton-1" and images["model_name"] == "digits"
    probabilities, best = images["outputs"]["probabilities"], images["outputs"]["labels"]
    assert probabilities["shape"] == [8, 10] and probabilities["datatype"] == "FP32" and probabilities["binary"]
    assert np.allclose(np.asarray(probabilities["data"]).reshape(8, 10), expected, atol=2e-6)
    assert best["binary"] and best["data"] == [str(index) for index in expected.argmax(axis=1)]
    assert sum(a == str(b) for a, b in zip(best["data"], labels[:8])) >= 7, (best["data"], labels[:8])
    one = result["one_image"]["outputs"]
    assert one["probabilities"]["shape"] == [1, 10] and one["labels"]["data"] == best["data"][:1]
    assert np.allclose(one["probabilities"]["data"], expected[0], atol=2e-6)
    pixels = result["pixels_uint8"]["outputs"]
    assert pixels["probabilities"]["shape"] == [4, 10] and pixels["labels"]["binary"]
    assert sum(a == str(b) for a, b in zip(pixels["labels"]["data"], labels[8:12])) >= 3, pixels["labels"]["data"]
    fp32 = result["pixels_fp32"]["outputs"]  # the first frame as FP32: the same answer as UINT8
    assert fp32["labels"]["data"] == pixels["labels"]["data"][:1]
    assert np.allclose(fp32["probabilities"]["data"], pixels["probabilities"]["data"][:10], atol=2e-6)
    as_json = result["pixels_json"]["outputs"]  # JSON in, only "labels" asked for, as JSON
    assert list(as_json) == ["labels"] and not as_json["labels"]["binary"]
    assert as_json["labels"]["data"] == pixels["labels"]["data"]
    images_json = result["images_json"]["outputs"]  # BYTES as JSON: base64 strings (binary outputs: its default)
    assert np.allclose(np.asarray(images_json["probabilities"]["data"]).reshape(2, 10), expected[:2], atol=2e-6)
    assert result["bad"] == {"raised": True, "status": "400",
                             "message": "image 0: not an image: expected one of PNG, JPEG, BMP, GIF, WEBP"}
    assert result["too_many"]["status"] == "413" and "the limit is 256" in result["too_many"]["message"]


def test_tritonclient_with_its_defaults_straight_to_torchserve(server, triton_python, test_split, tmp_path):
    """Binary tensor data in and out, read by the handler. TorchServe 0.12.0 has no model metadata or readiness over
    REST (its own 404, not in the protocol's error shape, so tritonclient cannot even read the refusal): the gateway
    has."""
    result = run_triton_client(triton_python, tmp_path, server.endpoints.inference, server.inference_token,
                               test_split)
    expected = np.stack([probabilities_of(answer) for answer in own_answers(server, test_split[0][:8])])
    check_triton_answers(result, expected, test_split[1])
    assert result["model_ready"] is False  # TorchServe's REST 404: tritonclient reads any non-200 as "not ready"
    metadata = result["metadata"]
    assert metadata["raised"] and metadata["status"] == "404"
    assert "while decoding the response: 'error'" in metadata["message"]


def test_tritonclient_through_the_gateway(gateway, server, triton_python, test_split, tmp_path):
    """The same through the gateway (on the host, and in the container): and there the model's metadata,
    configuration and readiness answer, and a request built from the metadata alone is answered. tritonclient's gRPC client reaches
    the handler too (the gateway maps the protocol's service name), but it sends its tensors as raw_input_contents,
    which TorchServe 0.12.0's frontend drops: the handler sees an input without data and says why, in band."""
    result = run_triton_client(triton_python, tmp_path, gateway.rest, gateway.credential, test_split, gateway.grpc)
    expected = np.stack([probabilities_of(answer) for answer in own_answers(server, test_split[0][:8])])
    check_triton_answers(result, expected, test_split[1])
    assert result["model_ready"] is True
    metadata = result["metadata"]
    assert "raised" not in metadata, metadata
    assert metadata["metadata"]["name"] == "digits" and metadata["config"]["max_batch_size"] == 0
    built = metadata["from_metadata"]["outputs"]
    assert built["labels"]["data"] == result["pixels_uint8"]["outputs"]["labels"]["data"]
    over_grpc = result["grpc"]
    assert list(over_grpc.get("outputs", {})) == ["error"], over_grpc
    error = json.loads(over_grpc["outputs"]["error"][0])
    assert error["code"] == 400 and "input holds 0 elements" in error["error"]
    assert "drops raw_input_contents" in error["error"]
