"""The REST routes of Triton's shared-memory extensions: system shared memory, and a clear
refusal for CUDA shared memory (which this server does not offer).

::

    GET  /v2/systemsharedmemory[/region/{name}]/status
    POST /v2/systemsharedmemory/region/{name}/register     {"key": ..., "offset": ..., "byte_size": ...}
    POST /v2/systemsharedmemory[/region/{name}]/unregister
"""

from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from gateway.protocol.errors import InvalidRequest, PayloadTooLarge, Unsupported
from gateway.protocol.system_shm import SystemSharedMemory
from gateway.rest import schemas

#: A register body is three small fields; anything much larger is not one.
MAX_REGISTER_BODY = 64 * 1024

CUDA_SHM_UNSUPPORTED = ("CUDA shared memory is not supported on this server; "
                        "use system shared memory (/v2/systemsharedmemory)")

_ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": schemas.ErrorResponse}}
_TAGS: list[str | Any] = ["shared memory"]


def add_shared_memory_routes(app: FastAPI, shm: SystemSharedMemory) -> None:
    """Serve ``shm`` under /v2/systemsharedmemory and refuse /v2/cudasharedmemory with 501."""

    async def status_all() -> Response:
        return _json(shm.status(None))

    async def status(name: str) -> Response:
        return _json(shm.status(name))

    async def register(request: Request, name: str) -> Response:
        body = await _small_body(request)
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"malformed JSON in register request: {exc}") from None
        if not isinstance(document, dict):
            raise InvalidRequest("the register request must be a JSON object with key, offset and byte_size")
        key = document.get("key")
        if not isinstance(key, str):
            raise InvalidRequest(f"failed to register shared memory region '{name}': 'key' must be a string")
        if "byte_size" not in document:
            raise InvalidRequest(f"failed to register shared memory region '{name}': 'byte_size' is required")
        shm.register(name, key, document.get("offset", 0), document["byte_size"])
        await shm.changed()
        return Response(status_code=200)

    async def unregister_all() -> Response:
        shm.unregister(None)
        await shm.changed()
        return Response(status_code=200)

    async def unregister(name: str) -> Response:
        shm.unregister(name)
        await shm.changed()
        return Response(status_code=200)

    base = "/v2/systemsharedmemory"
    status_docs: dict[str, Any] = {"response_model": list[schemas.SharedMemoryRegionStatus],
                                   "responses": _ERRORS, "tags": _TAGS}
    app.add_api_route(f"{base}/status", status_all, methods=["GET"], name="system_shm_status_all", **status_docs)
    app.add_api_route(f"{base}/region/{{name}}/status", status, methods=["GET"], name="system_shm_status",
                      **status_docs)
    app.add_api_route(f"{base}/region/{{name}}/register", register, methods=["POST"], name="system_shm_register",
                      responses=_ERRORS, tags=_TAGS, openapi_extra={"requestBody": _REGISTER_BODY})
    app.add_api_route(f"{base}/unregister", unregister_all, methods=["POST"], name="system_shm_unregister_all",
                      responses=_ERRORS, tags=_TAGS)
    app.add_api_route(f"{base}/region/{{name}}/unregister", unregister, methods=["POST"],
                      name="system_shm_unregister", responses=_ERRORS, tags=_TAGS)

    async def cuda_unsupported() -> Response:
        raise Unsupported(CUDA_SHM_UNSUPPORTED)

    refused: dict[str, Any] = {"responses": {501: {"model": schemas.ErrorResponse}}, "tags": _TAGS}
    for method, path in (("GET", "/status"), ("GET", "/region/{name}/status"), ("POST", "/region/{name}/register"),
                         ("POST", "/unregister"), ("POST", "/region/{name}/unregister")):
        app.add_api_route(f"/v2/cudasharedmemory{path}", cuda_unsupported, methods=[method],
                          name=f"cuda_shm_{method.lower()}{path.replace('/', '_').replace('{name}', 'region')}",
                          **refused)


def _json(document: Any) -> Response:
    return Response(orjson.dumps(document), media_type="application/json")


async def _small_body(request: Request) -> bytes:
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REGISTER_BODY:
            raise PayloadTooLarge(f"a register request body is at most {MAX_REGISTER_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


_REGISTER_BODY = {
    "required": True,
    "content": {"application/json": {"schema": schemas.SharedMemoryRegisterRequest.model_json_schema()}},
}
