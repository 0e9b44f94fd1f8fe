"""What TF Serving's REST and gRPC APIs share: model specs, signatures, status, metadata, predict.

Our models have one signature each, served under the name its config gives
(``parameters.signature_name``, as a SavedModel's is chosen) or else as TF Serving's default one:
a request may name it, name ``serving_default``, or leave it empty; any other name is refused. TensorGate has no version
labels, so a request that names one is refused the way TF Serving refuses an unknown label.
Predict builds the same InferRequest a v2 request becomes and runs it through
``DataPlane.infer``: one validation, one queue and batcher, one set of metrics.
"""

from typing import Any

import numpy as np

from gateway.contract import UNLOADED, ServedModel, TensorSpec
from gateway.dataplane import DataPlane
from gateway.protocol.datatypes import datatype_of
from gateway.protocol.errors import InvalidRequest, NotFound
from gateway.protocol.types import InferInput, InferRequest, InferResponse, RequestedOutput
from gateway.tfserving.datatypes import dt_name

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
#: The one metadata field GetModelMetadata answers.
SIGNATURE_DEF = "signature_def"

#: Our states -> TF Serving's ModelVersionStatus.State.
_STATES = {"READY": "AVAILABLE", "LOADING": "LOADING", "": "START"}


def signature_name(model: ServedModel) -> str:
    """The name the model's one signature is served under."""
    parameter = model.config.get("parameters", {}).get("signature_name")
    return str(parameter["string_value"]) if parameter else DEFAULT_SIGNATURE


def check_signature(model: ServedModel, name: str) -> None:
    """Only the one signature each model has: by its name, as ``serving_default``, or unnamed."""
    served = signature_name(model)
    if name not in ("", DEFAULT_SIGNATURE, served):
        raise InvalidRequest(f"signature_name '{name}' is not served: model '{model.name}' has one signature, "
                             f"'{served}' (or leave signature_name out)")


def check_label(label: str | None) -> None:
    if label:
        raise InvalidRequest(f"Unrecognized servable version label: {label} (TensorGate has no version labels: "
                             f"name a version number, or none for the latest)")


def resolve(plane: DataPlane, name: str, version: str | None, label: str | None) -> ServedModel:
    """The ready model version a request names (by number, or the latest)."""
    check_label(label)
    return plane.ready_model(name, version)


def model_status(plane: DataPlane, name: str, version: str | None, label: str | None) -> dict[str, Any]:
    """GetModelStatusResponse as JSON: every served version of ``name``, or the one named."""
    check_label(label)
    models = [plane.model(name, version)] if version else plane.versions(name)
    versions = [m for m in models if m.version is not None]
    if not versions:
        reason = models[0].reason if models else ""
        raise NotFound(f"Could not find any versions of model {name}" + (f": {reason}" if reason else ""))
    return {"model_version_status": [_version_status(m) for m in versions]}


def _version_status(model: ServedModel) -> dict[str, Any]:
    state = _STATES.get(model.state, "END")
    failed = state == "END" and model.reason != UNLOADED
    return {"version": str(model.version), "state": state,
            "status": {"error_code": "UNKNOWN" if failed else "OK", "error_message": model.reason if failed else ""}}


def model_spec(model: ServedModel) -> dict[str, Any]:
    """ModelSpec as JSON (REST metadata's), for a ready version (which always has a number)."""
    return {"name": model.name, "signature_name": "", "version": str(model.version)}


def signature_def_map(model: ServedModel) -> dict[str, Any]:
    """SignatureDefMap as JSON: the model's one signature, batch dimension (-1) included when it batches."""
    assert model.signature is not None
    batch = (-1,) if model.max_batch_size > 0 else ()
    return {"signature_def": {signature_name(model): {
        "inputs": {t.name: _tensor_info(t, batch) for t in model.signature.inputs},
        "outputs": {t.name: _tensor_info(t, batch) for t in model.signature.outputs},
        "method_name": PREDICT_METHOD,
    }}}


def _tensor_info(spec: TensorSpec, batch: tuple[int, ...]) -> dict[str, Any]:
    dims = [{"size": str(d), "name": ""} for d in (*batch, *spec.shape)]
    return {"dtype": dt_name(spec.datatype), "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": spec.name}


def input_spec(model: ServedModel, name: str | None) -> TensorSpec:
    """The input a request's tensor is for; ``None``: the unnamed input of a model that has exactly one."""
    assert model.signature is not None
    inputs = model.signature.inputs
    if name is None:
        if len(inputs) != 1:
            names = ", ".join(t.name for t in inputs)
            raise InvalidRequest(f"model '{model.name}' has {len(inputs)} inputs ({names}): name each one "
                                 f"(unnamed inputs are for models with exactly one input)")
        return inputs[0]
    for spec in inputs:
        if spec.name == name:
            return spec
    raise InvalidRequest(f"model '{model.name}' has no input '{name}' (its inputs: "
                         f"{', '.join(t.name for t in inputs)})")


async def predict(plane: DataPlane, model: str, version: str | None, inputs: dict[str, np.ndarray],
                  output_filter: list[str], protocol: str) -> InferResponse:
    """Run ``inputs`` (by input name) through the DataPlane; ``output_filter`` empty means every output."""
    request = InferRequest(
        model_name=model,
        model_version=version,
        inputs=[InferInput(name, datatype_of(array.dtype), array) for name, array in inputs.items()],
        outputs=[RequestedOutput(name) for name in output_filter] or None,
    )
    return await plane.infer(request, protocol)
