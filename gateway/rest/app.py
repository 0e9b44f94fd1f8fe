"""The v2 REST routes (Open Inference Protocol, with Triton's binary and config extensions).

Handlers take the raw ``Request`` and return ``Response`` objects built by the codecs, so
no pydantic validation or serialisation runs per request; the schemas only document.
"""

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException

from gateway import __version__
from gateway.dataplane import DataPlane
from gateway.protocol.errors import TensorGateError
from gateway.protocol.system_shm import SystemSharedMemory
from gateway.rest import schemas
from gateway.rest.body import read_body
from gateway.rest.infer import InferRoute
from gateway.rest.repository import add_repository_routes
from gateway.rest.shared_memory import add_shared_memory_routes
from gateway.tfserving.rest import add_tfserving_routes

HEADER_LENGTH = "inference-header-content-length"

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse} for code in (400, 404, 413, 500, 503)
}


def json_response(document: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status_code=status, media_type="application/json")


def create_app(plane: DataPlane, max_request_bytes: int, shm: SystemSharedMemory) -> FastAPI:
    """The FastAPI application serving ``plane``; bodies over ``max_request_bytes`` get 413.

    ``shm`` is the process's system shared-memory registry (gRPC serves the same one).
    """
    app = FastAPI(title="TensorGate", version=__version__, docs_url="/docs", redoc_url=None,
                  description="Open Inference Protocol (KServe v2) model server.")

    @app.exception_handler(TensorGateError)
    async def _protocol_error(_: Request, exc: TensorGateError) -> Response:
        return json_response({"error": exc.message}, exc.http_status)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> Response:
        return json_response({"error": str(exc.detail)}, exc.status_code)

    @app.get("/v2/health/live", response_model=schemas.LiveResponse, tags=["health"])
    async def live() -> Response:
        return json_response({"live": plane.live()})

    @app.get("/v2/health/ready", response_model=schemas.ReadyResponse, tags=["health"],
             responses={503: {"model": schemas.ReadyResponse}})
    async def ready() -> Response:
        is_ready = plane.ready()
        return json_response({"ready": is_ready}, 200 if is_ready else 503)

    @app.get("/v2", response_model=schemas.ServerMetadataResponse, tags=["metadata"])
    async def server_metadata() -> Response:
        return json_response(plane.server_metadata())

    @app.get("/v2/models/stats", response_model=schemas.StatisticsResponse, tags=["statistics"])
    async def all_statistics() -> Response:
        """Statistics of every model version, in the shape of Triton's statistics extension."""
        return json_response({"model_stats": await plane.statistics(None, None)})

    @app.get("/v2/models", response_model=schemas.ModelIndexResponse, tags=["metadata"])
    async def model_index() -> Response:
        return json_response({"models": plane.model_index()})

    async def model_metadata(_: Request, model_name: str, model_version: str | None) -> Response:
        return json_response(plane.model_metadata(model_name, model_version))

    async def model_ready(_: Request, model_name: str, model_version: str | None) -> Response:
        model = plane.model(model_name, model_version)
        body: dict[str, Any] = {"name": model.name, "version": "" if model.version is None else str(model.version),
                                "ready": model.ready}
        if not model.ready:
            body["reason"] = model.reason
        return json_response(body, 200 if model.ready else 503)

    async def model_config(_: Request, model_name: str, model_version: str | None) -> Response:
        """The model's effective configuration, in the JSON shape of Triton's ModelConfig."""
        return json_response(plane.model_config(model_name, model_version))

    route = InferRoute(plane, shm)

    async def infer(request: Request, model_name: str, model_version: str | None) -> Response:
        """The documented twin of the REST port's fast inference path (gateway.rest.infer)."""
        body = await read_body(request, max_request_bytes)
        reply = await route(model_name, model_version, body, request.headers.get(HEADER_LENGTH), request.headers.raw)
        headers = {} if reply.header_length is None else {"Inference-Header-Content-Length": str(reply.header_length)}
        return Response(bytes(reply.body), reply.status, headers, reply.content_type.decode())

    async def model_statistics(_: Request, model_name: str, model_version: str | None) -> Response:
        return json_response({"model_stats": await plane.statistics(model_name, model_version)})

    not_ready = {404: {"model": schemas.ErrorResponse}, 503: {"model": schemas.ModelReadyResponse}}
    _model_routes(app, "GET", "", model_metadata, response_model=schemas.ModelMetadataResponse,
                  responses=_ERRORS, tags=["metadata"])
    _model_routes(app, "GET", "/ready", model_ready, response_model=schemas.ModelReadyResponse,
                  responses=not_ready, tags=["health"])
    _model_routes(app, "GET", "/config", model_config, responses=_ERRORS, tags=["metadata"],
                  description="The model's effective configuration, in the JSON shape of Triton's ModelConfig.")
    _model_routes(app, "GET", "/stats", model_statistics, response_model=schemas.StatisticsResponse,
                  responses=_ERRORS, tags=["statistics"])
    _model_routes(app, "POST", "/infer", infer, response_model=schemas.InferenceResponse, responses=_ERRORS,
                  tags=["inference"], openapi_extra={"requestBody": _INFER_BODY})
    add_shared_memory_routes(app, shm)
    add_repository_routes(app, plane)
    add_tfserving_routes(app, plane, max_request_bytes)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
            components = document.setdefault("components", {}).setdefault("schemas", {})
            schema = schemas.InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(schema.pop("$defs", {}))
            components["InferenceRequest"] = schema
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


ModelHandler = Callable[[Request, str, str | None], Awaitable[Response]]


def _model_routes(app: FastAPI, method: str, suffix: str, handler: ModelHandler, **docs: Any) -> None:
    """Register ``handler`` at /v2/models/{m}<suffix> and at .../versions/{v}<suffix>."""

    async def latest(request: Request, model_name: str) -> Response:
        return await handler(request, model_name, None)

    async def pinned(request: Request, model_name: str, model_version: str) -> Response:
        return await handler(request, model_name, model_version)

    name = handler.__name__
    app.add_api_route(f"/v2/models/{{model_name}}{suffix}", latest, methods=[method], name=name, **docs)
    app.add_api_route(f"/v2/models/{{model_name}}/versions/{{model_version}}{suffix}", pinned, methods=[method],
                      name=f"{name}_version", **docs)


_INFER_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "description": "Binary tensor data extension: the JSON InferenceRequest (its length in the "
                           "Inference-Header-Content-Length header) followed by the inputs' raw bytes.",
        },
    },
}

