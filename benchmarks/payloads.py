"""Request bodies for each protocol, built once before a run and sent unchanged by every client
(``benchmarks.loadgen``, and ``wrk`` through ``benchmarks/infer.lua``).

The tensors come from ``benchmarks.inputs`` (any model's metadata, any datatype, any number of
inputs), so one body serves a built-in benchmark model and a user's model alike:

- ``rest-json``: every input as a flat JSON ``data`` list (BYTES as strings), JSON reply.
- ``rest-binary``: Triton's binary tensor extension both ways: a JSON header whose inputs carry
  ``binary_data_size``, then the raw bytes of each input in order; every output asked for as binary.
- ``grpc``: a serialized ``ModelInferRequest`` with ``raw_input_contents`` (our generated modules).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.inputs import Tensor, json_data, raw_bytes

PROTOCOLS = ("rest-json", "rest-binary", "grpc")


@dataclass(frozen=True, slots=True)
class Payload:
    protocol: str
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"body-{self.protocol}.bin"
        path.write_bytes(self.body)
        return path


def build_payload(model: str, tensors: list[Tensor], outputs: list[str], protocol: str) -> Payload:
    """One request to ``model`` with ``tensors``; ``outputs`` (the metadata's) are asked for as binary
    over ``rest-binary`` (all of them when the metadata lists none)."""
    if protocol == "rest-json":
        body = {"inputs": [{"name": t.name, "shape": list(t.data.shape), "datatype": t.datatype,
                            "data": json_data(t)} for t in tensors]}
        return Payload(protocol, json.dumps(body, separators=(",", ":")).encode())
    if protocol == "rest-binary":
        raws = [raw_bytes(t) for t in tensors]
        document: dict[str, Any] = {
            "inputs": [{"name": t.name, "shape": list(t.data.shape), "datatype": t.datatype,
                        "parameters": {"binary_data_size": len(raw)}} for t, raw in zip(tensors, raws, strict=True)],
        }
        if outputs:
            document["outputs"] = [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
        else:
            document["parameters"] = {"binary_data_output": True}
        header = json.dumps(document, separators=(",", ":")).encode()
        return Payload(protocol, b"".join([header, *raws]), "application/octet-stream",
                       {"Inference-Header-Content-Length": str(len(header))})
    if protocol == "grpc":
        from gateway.grpc.generated import grpc_service_pb2 as pb

        request = pb.ModelInferRequest(model_name=model, raw_input_contents=[raw_bytes(t) for t in tensors])
        for t in tensors:
            request.inputs.add(name=t.name, datatype=t.datatype, shape=list(t.data.shape))
        return Payload(protocol, request.SerializeToString())
    raise ValueError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
