"""NVIDIA's tritonclient (HTTP) against a real server, with its default settings: binary tensor data both ways.

Runs in its own virtualenv (.venv-triton, made by `make triton-client`). tests/integration/test_open_inference.py and
the container tests run it as a subprocess:
  .venv-triton/bin/python tests/support/triton_client.py <case file.json>
The case file names the REST address (host:port, what tritonclient takes), a gRPC one (optional), the bearer token, the model, PNG images
(base64), pixel frames (28x28, 0-255) and one bad image; this prints, as JSON, what tritonclient made of each answer.
Nothing of the bundle is imported here: the point is a client nobody here wrote.
"""
from __future__ import annotations

import base64
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def outputs(result) -> dict:
    """An InferResult's outputs as {name: {"shape", "datatype", "data", "binary"}} (BYTES decoded as UTF-8 text);
    "binary": whether the output came as binary data (parameters.binary_data_size) rather than JSON."""
    found = {}
    for output in result.get_response()["outputs"]:
        array = result.as_numpy(output["name"])
        data = [item.decode() if isinstance(item, bytes) else item for item in array.reshape(-1).tolist()]
        found[output["name"]] = {"shape": list(array.shape), "datatype": output["datatype"], "data": data,
                                 "binary": "binary_data_size" in output.get("parameters", {})}
    return found


def images_input(images: list[bytes], binary: bool = True) -> httpclient.InferInput:
    """BYTES [N], each element a PNG file's bytes: in binary (the default) raw, as the extension carries them; as
    JSON the elements must be text, so base64 (the bundle's JSON convention)."""
    tensor = httpclient.InferInput("images", [len(images)], "BYTES")
    elements = images if binary else [base64.b64encode(image) for image in images]
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def pixels_input(frames: np.ndarray, datatype: str, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput("pixels", list(frames.shape), datatype)
    tensor.set_data_from_numpy(frames.astype(np.uint8 if datatype == "UINT8" else np.float32), binary_data=binary)
    return tensor


def answer(result) -> dict:
    response = result.get_response()
    return {"id": response.get("id"), "model_name": response.get("model_name"), "outputs": outputs(result)}


def refusal(call) -> dict:
    try:
        call()
        return {"raised": False}
    except InferenceServerException as error:
        return {"raised": True, "status": error.status(), "message": error.message()}


def cases(case: dict, images: list[bytes], frames: np.ndarray, bad: bytes) -> dict:
    headers = {"Authorization": f"Bearer {case['token']}"}
    model = case["model"]
    client = httpclient.InferenceServerClient(case["url"], connection_timeout=30, network_timeout=30)
    try:
        result = {"live": client.is_server_live(headers=dict(headers)),
                  "model_ready": client.is_model_ready(model, headers=dict(headers))}
        # A fresh headers dict for each call: tritonclient adds Inference-Header-Content-Length to the dict it is
        # given, and a dict kept across calls would carry one request's header length into the next.
        infer = lambda inputs, **kwargs: client.infer(model, inputs, headers=dict(headers), **kwargs)  # noqa: E731
        result["images"] = answer(infer([images_input(images)], request_id="triton-1"))
        result["one_image"] = answer(infer([images_input(images[:1])]))
        result["pixels_uint8"] = answer(infer([pixels_input(frames, "UINT8")]))
        result["pixels_fp32"] = answer(infer([pixels_input(frames[:1], "FP32")]))
        result["pixels_json"] = answer(infer([pixels_input(frames, "UINT8", binary=False)],
                                             outputs=[httpclient.InferRequestedOutput("labels", binary_data=False)]))
        result["images_json"] = answer(infer([images_input(images[:2], binary=False)]))
        result["bad"] = refusal(lambda: infer([images_input([bad])]))
        result["too_many"] = refusal(lambda: infer([pixels_input(np.zeros((257, 28, 28)), "UINT8")]))
        # What the server says the model takes, and a request built from that alone.
        try:
            metadata = client.get_model_metadata(model, headers=headers)
            config = client.get_model_config(model, headers=headers)
            spec = metadata["inputs"][0]
            tensor = httpclient.InferInput(spec["name"], [len(frames), *spec["shape"][1:]], spec["datatype"])
            tensor.set_data_from_numpy(frames.astype(np.uint8))
            result["metadata"] = {"metadata": metadata, "config": config,
                                  "from_metadata": answer(infer([tensor]))}
        except InferenceServerException as error:
            result["metadata"] = {"raised": True, "status": error.status(), "message": error.message()}
        return result
    finally:
        client.close()


def grpc_cases(case: dict, images: list[bytes]) -> dict:
    """tritonclient's gRPC client sends every tensor as raw_input_contents (never typed contents): what it gets."""
    client = grpcclient.InferenceServerClient(case["grpc"])
    metadata = {"authorization": f"Bearer {case['token']}"}
    try:
        tensor = grpcclient.InferInput("images", [len(images)], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
        response = client.infer(case["model"], [tensor], headers=metadata).get_response()
        # TorchServe answers in typed contents (bytes_contents), never raw_output_contents; tritonclient's as_numpy
        # fails on typed BYTES contents under NumPy 2 (np.array(..., copy=False)), so the message is read directly.
        return {"outputs": {output.name: [item.decode() for item in output.contents.bytes_contents]
                            for output in response.outputs}}
    except InferenceServerException as error:
        return {"raised": True, "status": error.status(), "message": error.message()}
    finally:
        client.close()


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as file:
        case = json.load(file)
    images = [base64.b64decode(text) for text in case["images"]]
    frames = np.asarray(case["frames"], dtype=np.float64)
    result = cases(case, images, frames, base64.b64decode(case["bad"]))
    if case.get("grpc"):
        result["grpc"] = grpc_cases(case, images[:2])
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
