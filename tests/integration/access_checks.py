"""API keys through tritonclient HTTP and gRPC (``headers=`` on each call), in a process of its own.

tritonclient.grpc and TensorGate's generated modules both register ``inference.*`` in protobuf's
default pool, so this script never imports ``gateway``. Usage:
``python access_checks.py HTTP_HOST:PORT GRPC_HOST:PORT MODEL`` with the keys in ``ACCESS_CLIENT_KEY``
(inference, header x-api-key) and ``ACCESS_ADMIN_KEY`` (model-repository and shared-memory, header
x-admin-key); MODEL is y = x + 1 on [1, 4] FP32, loaded, served in explicit mode. Prints
``{"ok": true}`` or the failure as JSON, and exits 0.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException


def client_key() -> dict[str, str]:
    """A new dict per call: tritonclient.http adds its own headers to the one it is given."""
    return {"x-api-key": os.environ["ACCESS_CLIENT_KEY"]}


def admin_key() -> dict[str, str]:
    return {"x-admin-key": os.environ["ACCESS_ADMIN_KEY"]}


def refused(call: Callable[[], Any], status: str, *words: str) -> None:
    try:
        call()
    except InferenceServerException as exc:
        assert exc.status() == status, (exc.status(), exc.message())
        assert all(w in (exc.message() or "") for w in words), exc.message()
    else:
        raise AssertionError(f"expected {status}")


def http_checks(url: str, model: str) -> None:
    client = httpclient.InferenceServerClient(url=url, network_timeout=120)
    assert client.is_server_live() and client.is_server_ready()  # health stays open
    x = httpclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.full((1, 4), 1.5, dtype=np.float32), binary_data=True)
    refused(lambda: client.infer(model, [x]), "401", "x-api-key")
    refused(lambda: client.infer(model, [x], headers=admin_key()), "401", "x-api-key")  # a key of another group
    assert client.infer(model, [x], headers=client_key()).as_numpy("y").tolist() == [[2.5] * 4]

    refused(lambda: client.get_model_repository_index(), "401", "x-admin-key")
    refused(lambda: client.get_model_repository_index(headers={"x-admin-key": os.environ["ACCESS_CLIENT_KEY"]}), "401")
    assert model in {m["name"] for m in client.get_model_repository_index(headers=admin_key())}
    refused(lambda: client.unload_model(model), "401")
    client.unload_model(model, headers=admin_key())
    assert not client.is_model_ready(model)
    client.load_model(model, headers=admin_key())
    assert client.is_model_ready(model)

    handle = shm.create_shared_memory_region("access_http", f"/tg_access_{os.getpid()}", 16)
    try:
        refused(lambda: client.register_system_shared_memory("access_http", f"/tg_access_{os.getpid()}", 16),
                "401", "x-admin-key")
        client.register_system_shared_memory("access_http", f"/tg_access_{os.getpid()}", 16, headers=admin_key())
        status = client.get_system_shared_memory_status(headers=admin_key())
        assert [r["name"] for r in status] == ["access_http"], status
        client.unregister_system_shared_memory("access_http", headers=admin_key())
    finally:
        shm.destroy_shared_memory_region(handle)


def grpc_checks(address: str, model: str) -> None:
    client = grpcclient.InferenceServerClient(url=address)
    assert client.is_server_live() and client.is_server_ready()
    x = grpcclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.full((1, 4), 1.5, dtype=np.float32))
    refused(lambda: client.infer(model, [x]), "StatusCode.UNAUTHENTICATED", "x-api-key")
    refused(lambda: client.infer(model, [x], headers=admin_key()), "StatusCode.UNAUTHENTICATED")
    assert client.infer(model, [x], headers=client_key()).as_numpy("y").tolist() == [[2.5] * 4]

    refused(lambda: client.get_model_repository_index(), "StatusCode.UNAUTHENTICATED", "x-admin-key")
    assert model in {m.name for m in client.get_model_repository_index(headers=admin_key()).models}
    refused(lambda: client.load_model(model), "StatusCode.UNAUTHENTICATED")
    client.unload_model(model, headers=admin_key())
    assert not client.is_model_ready(model)
    client.load_model(model, headers=admin_key())
    assert client.is_model_ready(model)

    key = f"/tg_access_grpc_{os.getpid()}"
    handle = shm.create_shared_memory_region("access_grpc", key, 16)
    try:
        refused(lambda: client.register_system_shared_memory("access_grpc", key, 16), "StatusCode.UNAUTHENTICATED")
        client.register_system_shared_memory("access_grpc", key, 16, headers=admin_key())
        status = client.get_system_shared_memory_status(headers=admin_key(), as_json=True)
        assert [r["name"] for r in status["regions"].values()] == ["access_grpc"], status
        client.unregister_system_shared_memory("access_grpc", headers=admin_key())
    finally:
        shm.destroy_shared_memory_region(handle)
    client.close()


def main(http_url: str, grpc_address: str, model: str) -> None:
    try:
        http_checks(http_url, model)
        grpc_checks(grpc_address, model)
    except Exception:
        print(json.dumps({"ok": False, "error": traceback.format_exc()}))
    else:
        print(json.dumps({"ok": True}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
