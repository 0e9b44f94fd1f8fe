"""The model repository extension through ``tritonclient.grpc``, in its own process.

tritonclient.grpc and TensorGate's generated modules both register ``inference.*`` in protobuf's
default pool, so this script never imports ``gateway``. Usage:
``python tritonclient_repository_checks.py HOST:PORT MODEL`` (MODEL: in the repository, not loaded, served
in explicit mode) prints ``{"ok": true}`` or the failure as JSON, and exits 0.
"""

from __future__ import annotations

import json
import sys
import traceback

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def checks(client: grpcclient.InferenceServerClient, model: str) -> None:
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert model in index and "state" not in index[model], index.get(model)
    assert not client.is_model_ready(model)

    client.load_model(model)
    assert client.is_model_ready(model)
    x = grpcclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.full((1, 4), 1.5, dtype=np.float32))
    result = client.infer(model, [x])
    assert result.as_numpy("y").tolist() == [[2.5] * 4], result.as_numpy("y")

    client.load_model(model, config=json.dumps({"max_batch_size": 2}))
    assert client.get_model_config(model).config.max_batch_size == 2

    client.unload_model(model, unload_dependents=True)
    assert not client.is_model_ready(model)
    entry = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}[model]
    assert entry["state"] == "UNAVAILABLE" and entry["reason"] == "unloaded", entry
    try:
        client.infer(model, [x])
    except InferenceServerException as exc:
        assert exc.status() == "StatusCode.UNAVAILABLE" and model in (exc.message() or ""), exc
    else:
        raise AssertionError("an unloaded model must refuse requests")

    for name, status in (("nothing", "StatusCode.NOT_FOUND"), ("../x", "StatusCode.INVALID_ARGUMENT")):
        try:
            client.load_model(name)
        except InferenceServerException as exc:
            assert exc.status() == status, (name, exc.status(), exc.message())
        else:
            raise AssertionError(f"loading {name!r} must fail")
    try:
        client.load_model(model, config="{not json")
    except InferenceServerException as exc:
        assert exc.status() == "StatusCode.INVALID_ARGUMENT" and "Invalid config override" in (exc.message() or "")
    else:
        raise AssertionError("a config that does not parse must be refused")


def main(argv: list[str]) -> int:
    address, model = argv
    client = grpcclient.InferenceServerClient(url=address)
    try:
        checks(client, model)
        outcome: dict[str, object] = {"ok": True}
    except Exception as exc:
        outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    finally:
        client.close()
    print(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
