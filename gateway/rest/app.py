"""The v2 REST routes (Open Inference Protocol, with Triton's binary and config extensions).

Handlers take the raw ``Request`` and return ``Response`` objects built by the codecs, so
no pydantic validation or serialisation runs per request; the schemas only document.
"""

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException

from gateway import __version__
from gateway.dataplane import DataPlane
from gateway.protocol.errors import InvalidRequest, PayloadTooLarge, TensorGateError, Unsupported
from gateway.protocol.json_codec import binary_output_names, decode_request, encode_response
from gateway.protocol.system_shm import SystemSharedMemory
from gateway.protocol.types import InferResponse
from gateway.rest import schemas
from gateway.rest.repository import add_repository_routes
from gateway.rest.shared_memory import add_shared_memory_routes

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

    async def infer(request: Request, model_name: str, model_version: str | None) -> Response:
        body = await _read_body(request, max_request_bytes)
        header, binary = _split_body(body, request.headers.get(HEADER_LENGTH))
        infer_request = decode_request(header, binary, model_name, model_version, shm)
        response = await _unless_disconnected(request, plane.infer(infer_request, "rest"))
        names = [o.name for o in response.outputs]
        try:
            placed = shm.place_outputs(infer_request, response)
            payload, json_length = encode_response(response, binary_output_names(infer_request, names), placed)
        finally:
            response.done()
        if json_length is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(json_length)})

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


async def _unless_disconnected(request: Request, work: Coroutine[Any, Any, InferResponse]) -> InferResponse:
    """Run ``work``, cancelled if the client hangs up first (a queued request then leaves the queue).

    One watcher task cancels this handler's own task; no second task wraps the work.
    """
    handler = asyncio.current_task()
    assert handler is not None
    watcher = asyncio.ensure_future(_disconnected(request))

    def hung_up(_: asyncio.Future[None]) -> None:
        if not watcher.cancelled():
            handler.cancel()

    watcher.add_done_callback(hung_up)
    try:
        return await work
    finally:
        watcher.remove_done_callback(hung_up)
        watcher.cancel()


async def _disconnected(request: Request) -> None:
    """Return once the client has gone (the body has been read, so only a disconnect arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole (decompressed) body, refusing anything over ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding in ("gzip", "deflate"):
        return _decompress(body, encoding, limit)
    if encoding != "identity":
        raise Unsupported(f"Content-Encoding '{encoding}' is not supported (use gzip or deflate)")
    return body


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"cannot decompress the {encoding} body: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"decompressed request body exceeds the limit of {limit} bytes")
    return data


def _split_body(body: bytes, header_length: str | None) -> tuple[memoryview, memoryview | None]:
    view = memoryview(body)
    if header_length is None:
        return view, None
    if not header_length.isdigit():
        raise InvalidRequest("Inference-Header-Content-Length must be a non-negative integer")
    length = int(header_length)
    if length == 0:
        raise Unsupported("raw binary requests (Inference-Header-Content-Length: 0) are not supported; "
                          "send a JSON header with binary_data_size")
    if length > len(body):
        raise InvalidRequest(
            f"Inference-Header-Content-Length {length} is larger than the body ({len(body)} bytes)"
        )
    return view[:length], view[length:]
