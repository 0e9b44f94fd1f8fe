"""tritonclient HTTP and gRPC sending a ``traceparent`` header, in their own process.

tritonclient.grpc registers ``inference.*`` in protobuf's default pool, as the server's generated
modules do, so this never imports ``gateway``. Usage: ``python tritonclient_tracing_checks.py
HTTP_ADDRESS GRPC_ADDRESS HTTP_TRACEPARENT GRPC_TRACEPARENT``; prints one JSON object and exits 0.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def main(http_address: str, grpc_address: str, http_parent: str, grpc_parent: str) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    http = httpclient.InferenceServerClient(http_address)
    http_input = httpclient.InferInput("x", list(x.shape), "FP32")
    http_input.set_data_from_numpy(x)
    http_y = http.infer("delay", [http_input], request_id="triton-http", headers={"traceparent": http_parent})
    grpc = grpcclient.InferenceServerClient(grpc_address)
    grpc_input = grpcclient.InferInput("x", list(x.shape), "FP32")
    grpc_input.set_data_from_numpy(x)
    grpc_y = grpc.infer("delay", [grpc_input], request_id="triton-grpc", headers={"traceparent": grpc_parent})
    print(json.dumps({"http": http_y.as_numpy("y").tolist(), "grpc": grpc_y.as_numpy("y").tolist()}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
