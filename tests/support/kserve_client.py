"""KServe's own Python SDK (kserve.InferenceRESTClient, kserve.InferenceGRPCClient) against a real server.

Runs in its own virtualenv (.venv-kserve, made by `make kserve-client`): kserve pins protobuf and grpcio below what
the bundle uses, so it cannot share .venv. tests/integration/test_open_inference.py runs it as a subprocess:
  .venv-kserve/bin/python tests/support/kserve_client.py <case file.json>
The case file names the REST base URL, the gRPC target, the bearer token, the model, PNG images (base64), pixel
frames (28x28, 0-255) and one bad image; this prints, as JSON, what KServe's SDK made of each answer. Nothing of the
bundle is imported here: the point is a client nobody here wrote.
"""
from __future__ import annotations

import asyncio
import base64
import json
import sys

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


def outputs(response) -> dict:
    """An InferResponse's outputs as {name: {"shape", "datatype", "data"}} (BYTES decoded as UTF-8 text)."""
    found = {}
    for output in response.outputs:
        array = output.as_numpy()
        data = [item.decode() if isinstance(item, bytes) else item for item in array.reshape(-1).tolist()]
        found[output.name] = {"shape": list(array.shape), "datatype": output.datatype, "data": data}
    return found


def images_input(images: list[bytes], transport: str) -> InferInput:
    """BYTES [N]: over REST (JSON) each image as a base64 string; over gRPC the raw bytes (bytes_contents)."""
    data = [base64.b64encode(image).decode() for image in images] if transport == "rest" else images
    return InferInput("images", [len(images)], "BYTES", data=data)


def pixels_input(frames: np.ndarray, datatype: str) -> InferInput:
    tensor = InferInput("pixels", list(frames.shape), datatype)
    tensor.set_data_from_numpy(frames.astype(np.uint8 if datatype == "UINT8" else np.float32), binary_data=False)
    return tensor


async def rest_cases(case: dict, images: list[bytes], frames: np.ndarray, bad: bytes) -> dict:
    headers = {"Authorization": f"Bearer {case['token']}"}
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    base, model = case["rest"], case["model"]
    try:
        result = {
            "live": await client.is_server_live(base, headers=headers),
            "ready": await client.is_server_ready(base, headers=headers),
        }
        response = await client.infer(base, InferRequest(model, [images_input(images, "rest")], request_id="rest-1"),
                                      model_name=model, headers=dict(headers))
        result["images"] = {"id": response.id, "model_name": response.model_name, "outputs": outputs(response)}
        response = await client.infer(base, InferRequest(model, [pixels_input(frames, "UINT8")]), model_name=model,
                                      headers=dict(headers))
        result["pixels"] = {"outputs": outputs(response)}
        try:
            await client.infer(base, InferRequest(model, [images_input([bad], "rest")]), model_name=model,
                               headers=dict(headers))
            result["bad"] = {"raised": False}
        except httpx.HTTPStatusError as error:
            result["bad"] = {"raised": True, "status": error.response.status_code, "body": error.response.json(),
                             "message": str(error)}
        return result
    finally:
        await client.close()


async def grpc_cases(case: dict, images: list[bytes], frames: np.ndarray, bad: bytes) -> dict:
    metadata = (("authorization", f"Bearer {case['token']}"),)
    model = case["model"]
    async with InferenceGRPCClient(case["grpc"], timeout=30, retries=0) as client:
        result = {
            "live": await client.is_server_live(headers=metadata),
            "ready": await client.is_server_ready(headers=metadata),
            "model_ready": await client.is_model_ready(model, headers=metadata),
        }
        response = await client.infer(InferRequest(model, [images_input(images, "grpc")], request_id="grpc-1"),
                                      headers=metadata)
        result["images"] = {"id": response.id, "model_name": response.model_name, "outputs": outputs(response)}
        response = await client.infer(
            InferRequest(model, [pixels_input(frames.astype(np.float32), "FP32")],
                         request_outputs=[RequestedOutput("labels")]), headers=metadata)
        result["pixels"] = {"outputs": outputs(response)}
        response = await client.infer(InferRequest(model, [images_input([bad], "grpc")]), headers=metadata)
        result["bad"] = {"outputs": outputs(response)}
        try:
            await client.infer(InferRequest(model, [images_input(images[:1], "grpc")]),
                               headers=(("authorization", "Bearer wrong"),))
            result["wrong_token"] = {"raised": False}
        except grpc.aio.AioRpcError as error:
            result["wrong_token"] = {"raised": True, "code": error.code().name}
        return result


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as file:
        case = json.load(file)
    images = [base64.b64decode(text) for text in case["images"]]
    frames = np.asarray(case["frames"], dtype=np.float64)
    bad = base64.b64decode(case["bad"])
    result = {}
    if case.get("rest"):
        result["rest"] = asyncio.run(rest_cases(case, images, frames, bad))
    if case.get("grpc"):
        try:
            result["grpc"] = asyncio.run(grpc_cases(case, images, frames, bad))
        except grpc.aio.AioRpcError as error:  # e.g. UNIMPLEMENTED: the server lacks inference.GRPCInferenceService
            result["grpc"] = {"failed": error.code().name, "details": error.details()}
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
