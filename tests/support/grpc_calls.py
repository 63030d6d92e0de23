"""gRPC calls as a client without the right token makes them."""
from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from serving.rpc import client
from serving.rpc.stubs import inference_pb2_grpc


def refusals(channel: grpc.Channel, token: str | None, image: bytes, timeout: float) -> list[grpc.RpcError]:
    """Ping and Predictions sent with `token` (None: no authorization metadata at all): the error each raised.
    A call that is answered fails the test that asked."""
    metadata = [("authorization", f"Bearer {token}")] if token else []
    stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
    errors = []
    for name, call, message in (("Ping", stub.Ping, empty_pb2.Empty()),
                                ("Predictions", stub.Predictions, client.prediction_request("digits", None, image))):
        try:
            call(message, metadata=metadata, timeout=timeout)
        except grpc.RpcError as error:
            errors.append(error)
        else:
            raise AssertionError(f"{name} was answered without the right token")
    return errors
