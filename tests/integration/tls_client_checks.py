"""Triton's clients over TLS, run in their own process (tritonclient.grpc's protobuf registrations
clash with ours, so this script never imports ``gateway``).

Usage: ``python tls_client_checks.py JSON`` with ``{"http": HOST:PORT, "grpc": HOST:PORT, "ca": PATH,
"client": [CERT, KEY] | null, "foreign": [CERT, KEY] | null}``: ``client`` is a certificate the server
trusts (mTLS), ``foreign`` one from another CA. Prints one JSON object mapping each check that
applies to "ok" or the failure, and exits 0.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

#: 4 MiB of FP32: a body larger than a TLS record (16 KiB) and the socket buffers.
LARGE = np.arange(1024 * 1024, dtype=np.float32)


def http_client(options: dict[str, Any], pair: list[str] | None) -> httpclient.InferenceServerClient:
    ssl_options = {"ca_certs": options["ca"]}
    if pair is not None:
        ssl_options.update(certfile=pair[0], keyfile=pair[1])
    return httpclient.InferenceServerClient(options["http"], ssl=True, ssl_options=ssl_options,
                                            connection_timeout=10, network_timeout=30)


def grpc_client(options: dict[str, Any], pair: list[str] | None) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(options["grpc"], ssl=True, root_certificates=options["ca"],
                                            private_key=None if pair is None else pair[1],
                                            certificate_chain=None if pair is None else pair[0])


def http_round_trips(options: dict[str, Any]) -> None:
    """Health, then binary and JSON inference with a large tensor, several times on one kept-alive connection."""
    with http_client(options, options["client"]) as client:
        assert client.is_server_live() and client.is_server_ready()
        for binary in (True, False, True):
            data = LARGE if binary else LARGE[:1000]
            tensor = httpclient.InferInput("x", list(data.shape), "FP32")
            tensor.set_data_from_numpy(data, binary_data=binary)
            result = client.infer("flat_identity", [tensor],
                                  outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)])
            np.testing.assert_array_equal(result.as_numpy("y"), data)


def grpc_round_trips(options: dict[str, Any]) -> None:
    client = grpc_client(options, options["client"])
    try:
        assert client.is_server_live() and client.is_server_ready()
        for _ in range(3):
            tensor = grpcclient.InferInput("x", list(LARGE.shape), "FP32")
            tensor.set_data_from_numpy(LARGE)
            np.testing.assert_array_equal(client.infer("flat_identity", [tensor]).as_numpy("y"), LARGE)
    finally:
        client.close()


def http_refused(options: dict[str, Any], pair: list[str] | None) -> None:
    """No answer at all: the connection ends in or right after the handshake, before any HTTP."""
    with http_client(options, pair) as client:
        try:
            client.is_server_live()
        except InferenceServerException as exc:
            raise AssertionError(f"got an HTTP answer: {exc}") from exc
        except Exception:  # the transport's error (reset, EOF or a TLS alert), not an answer
            return
    raise AssertionError("the server answered a client it should have refused")


def grpc_refused(options: dict[str, Any], pair: list[str] | None) -> None:
    client = grpc_client(options, pair)
    try:
        client.is_server_live()
    except InferenceServerException as exc:
        assert exc.status() == "StatusCode.UNAVAILABLE", (exc.status(), exc.message())
        return
    finally:
        client.close()
    raise AssertionError("the server answered a client it should have refused")


def main() -> None:
    options = json.loads(sys.argv[1])
    checks: dict[str, Callable[[], None]] = {
        "http_round_trips": lambda: http_round_trips(options),
        "grpc_round_trips": lambda: grpc_round_trips(options),
    }
    if options["client"] is not None:
        checks.update({
            "http_without_certificate_refused": lambda: http_refused(options, None),
            "grpc_without_certificate_refused": lambda: grpc_refused(options, None),
        })
    if options["foreign"] is not None:
        checks.update({
            "http_foreign_certificate_refused": lambda: http_refused(options, options["foreign"]),
            "grpc_foreign_certificate_refused": lambda: grpc_refused(options, options["foreign"]),
        })
    outcome: dict[str, str] = {}
    for name, fn in checks.items():
        try:
            fn()
            outcome[name] = "ok"
        except Exception:
            outcome[name] = traceback.format_exc()
    print(json.dumps(outcome))


if __name__ == "__main__":
    main()
