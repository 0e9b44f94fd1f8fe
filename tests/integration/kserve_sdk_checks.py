"""KServe's own Python SDK against a running TensorGate, in the SDK's venv (.venv-kserve; its pins clash with ours).

Usage: kserve_sdk_checks.py HTTP_URL GRPC_ADDRESS MODEL. Prints one JSON line: what each call returned.
The SDK's clients (kserve 0.21) have health, readiness and infer calls but no metadata call, so model
metadata is asked through the SDK's own generated gRPC stub on the client's channel.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.grpc.grpc_predict_v2_pb2 import ModelMetadataRequest

ROWS = np.linspace(0.0, 1.0, 3 * 64, dtype=np.float32).reshape(3, 64)


def _request(model: str, binary: bool) -> InferRequest:
    tensor = InferInput(name="input", shape=list(ROWS.shape), datatype="FP32")
    tensor.set_data_from_numpy(ROWS, binary_data=binary)
    return InferRequest(model_name=model, infer_inputs=[tensor], request_id=f"sdk-{int(binary)}")


def _logits(response: Any) -> list[list[float]]:
    output = next(o for o in response.outputs if o.name == "logits")
    logits: list[list[float]] = output.as_numpy().astype(float).tolist()
    return logits


async def _rest(url: str, model: str) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    try:
        result: dict[str, Any] = {
            "live": await client.is_server_live(url),
            "ready": await client.is_server_ready(url),
            "model_ready": await client.is_model_ready(url, model),
        }
        for binary in (False, True):
            response = await client.infer(url, _request(model, binary), model_name=model)
            result[f"infer_binary_{binary}"] = {"id": response.id, "model_name": response.model_name,
                                                "logits": _logits(response)}
        return result
    finally:
        await client.close()


async def _grpc(address: str, model: str) -> dict[str, Any]:
    client = InferenceGRPCClient(address, timeout=30)
    try:
        metadata = await client._client_stub.ModelMetadata(ModelMetadataRequest(name=model), timeout=30)
        result: dict[str, Any] = {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready(model),
            "metadata": {"name": metadata.name, "platform": metadata.platform,
                         "inputs": [[t.name, t.datatype, list(t.shape)] for t in metadata.inputs],
                         "outputs": [[t.name, t.datatype, list(t.shape)] for t in metadata.outputs]},
        }
        for binary in (False, True):
            response = await client.infer(_request(model, binary))
            result[f"infer_binary_{binary}"] = {"id": response.id, "model_name": response.model_name,
                                                "logits": _logits(response)}
        return result
    finally:
        await client.close()


async def _main(url: str, address: str, model: str) -> None:
    print(json.dumps({"rest": await _rest(url, model), "grpc": await _grpc(address, model),
                      "rows": ROWS.tolist()}))


if __name__ == "__main__":
    asyncio.run(_main(*sys.argv[1:4]))
