"""Request bodies for each protocol, built once before a run and sent unchanged by every client.

- ``rest-json``: the input as a JSON number list (a 784-float body is about 15 kB), JSON reply.
- ``rest-binary``: Triton's binary tensor extension both ways (JSON header + raw FP32 bytes).
- ``grpc``: a serialized ``ModelInferRequest`` with ``raw_input_contents`` (our generated modules).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.models import ModelSpec, sample_input

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


def build_payload(spec: ModelSpec, served_name: str, protocol: str, rows: int = 1) -> Payload:
    x = sample_input(spec, rows)
    if protocol == "rest-json":
        body = {"inputs": [{"name": spec.input_name, "shape": list(x.shape), "datatype": "FP32",
                            "data": x.reshape(-1).tolist()}]}
        return Payload(protocol, json.dumps(body, separators=(",", ":")).encode())
    if protocol == "rest-binary":
        raw = x.tobytes()
        header = json.dumps({
            "inputs": [{"name": spec.input_name, "shape": list(x.shape), "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": spec.output_name, "parameters": {"binary_data": True}}],
        }, separators=(",", ":")).encode()
        return Payload(protocol, header + raw, "application/octet-stream",
                       {"Inference-Header-Content-Length": str(len(header))})
    if protocol == "grpc":
        from gateway.grpc.generated import grpc_service_pb2 as pb

        request = pb.ModelInferRequest(model_name=served_name, raw_input_contents=[x.tobytes()])
        request.inputs.add(name=spec.input_name, datatype="FP32", shape=list(x.shape))
        return Payload(protocol, request.SerializeToString())
    raise ValueError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
