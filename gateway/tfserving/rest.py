"""TF Serving's REST API on the REST port: model status, metadata and ``:predict``.

``GET /v1/models/{m}[/versions/{v}|/labels/{l}]`` (status), the same with ``/metadata``, and
``POST /v1/models/{m}[/versions/{v}|/labels/{l}]:{verb}`` where the verb is ``predict``
(``classify`` and ``regress`` take tf.Example protos, which TensorGate does not serve: 501).
Routed by the FastAPI app, after the REST port's fast path (which only takes v2's ``/infer``).
Errors are ``{"error": "..."}`` with TF Serving's status codes (400, 404, 501, 503), which are
TensorGate's own for the same errors.
"""

from collections.abc import Awaitable, Callable

import orjson
from fastapi import FastAPI, Request, Response

from gateway.dataplane import DataPlane
from gateway.protocol.errors import InvalidRequest, Unsupported
from gateway.rest.body import read_body
from gateway.tfserving import json_codec, predict

#: The verbs of TF Serving's REST API; only predict is served.
VERBS = ("predict", "classify", "regress")

Handler = Callable[[Request, str, str | None, str | None], Awaitable[Response]]


def _json(document: object) -> Response:
    return Response(orjson.dumps(document), media_type="application/json")


def add_tfserving_routes(app: FastAPI, plane: DataPlane, max_request_bytes: int) -> None:
    """Register TF Serving's routes on ``app``; bodies over ``max_request_bytes`` get 413."""

    async def status(_: Request, model: str, version: str | None, label: str | None) -> Response:
        return _json(predict.model_status(plane, model, version, label))

    async def metadata(_: Request, model: str, version: str | None, label: str | None) -> Response:
        served = predict.resolve(plane, model, version, label)
        return _json({"model_spec": predict.model_spec(served),
                      "metadata": {predict.SIGNATURE_DEF: predict.signature_def_map(served)}})

    async def run(request: Request, model: str, version: str | None, label: str | None, verb: str) -> Response:
        if verb != "predict":
            if verb in VERBS:
                raise Unsupported(f":{verb} is not supported (it takes tf.Example protos); use :predict")
            raise InvalidRequest(f"unknown verb ':{verb}' (TF Serving's are :predict, :classify and :regress)")
        body = json_codec.parse_predict_body(await read_body(request, max_request_bytes))
        served = predict.resolve(plane, model, version, label)
        predict.check_signature(served, body.signature_name)
        field = "instances" if body.row_format else "inputs"
        inputs = {}
        for name, value in body.values.items():
            spec = predict.input_spec(served, name)
            inputs[spec.name] = json_codec.to_array(value, spec, f"{field}: input '{spec.name}'")
        response = await predict.predict(plane, served.name, version, inputs, [], "rest")
        try:
            payload = json_codec.encode_predictions(response.outputs, body.row_format)
        finally:
            response.done()
        return Response(payload, media_type="application/json")

    async def run_latest(request: Request, model_name: str, verb: str) -> Response:
        return await run(request, model_name, None, None, verb)

    async def run_version(request: Request, model_name: str, version: str, verb: str) -> Response:
        return await run(request, model_name, version, None, verb)

    async def run_label(request: Request, model_name: str, label: str, verb: str) -> Response:
        return await run(request, model_name, None, label, verb)

    _routes(app, "", status, "tfserving_model_status")
    _routes(app, "/metadata", metadata, "tfserving_model_metadata")
    for path, endpoint in (("", run_latest), ("/versions/{version}", run_version), ("/labels/{label}", run_label)):
        app.add_api_route(f"/v1/models/{{model_name}}{path}:{{verb}}", endpoint, methods=["POST"],
                          name=f"tfserving_{endpoint.__name__}", tags=["tf serving"],
                          description="TF Serving's :predict (row or columnar JSON); :classify and :regress: 501.")


def _routes(app: FastAPI, suffix: str, handler: Handler, name: str) -> None:
    """GET ``handler`` at /v1/models/{m}<suffix>, .../versions/{v}<suffix> and .../labels/{l}<suffix>."""

    async def latest(request: Request, model_name: str) -> Response:
        return await handler(request, model_name, None, None)

    async def by_version(request: Request, model_name: str, version: str) -> Response:
        return await handler(request, model_name, version, None)

    async def by_label(request: Request, model_name: str, label: str) -> Response:
        return await handler(request, model_name, None, label)

    for path, endpoint, kind in (("", latest, ""), ("/versions/{version}", by_version, "_version"),
                                 ("/labels/{label}", by_label, "_label")):
        app.add_api_route(f"/v1/models/{{model_name}}{path}{suffix}", endpoint, methods=["GET"], name=f"{name}{kind}",
                          tags=["tf serving"])
