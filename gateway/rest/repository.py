"""The REST routes of Triton's model repository extension.

::

    POST /v2/repository/index                  {"ready": bool}                  -> [{name, version, state, reason}]
    POST /v2/repository/models/{m}/load        {"parameters": {"config": "<ModelConfig JSON>"}}
    POST /v2/repository/models/{m}/unload      {"parameters": {"unload_dependents": bool}}

Load and unload answer 200 once the change is in every frontend (explicit model control mode
only; otherwise 503 with Triton's message). ``{m}`` takes any path, so that a name holding a
``/`` (``a%2Fb``, ``..%2Fx``) gets a 400 saying why, rather than an anonymous 404.
"""

from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from gateway.dataplane import DataPlane
from gateway.protocol.errors import InvalidRequest, PayloadTooLarge
from gateway.rest import schemas

#: A load body carries at most a model config; anything larger is not one.
MAX_BODY = 4 * 1024 * 1024

_TAGS: list[str | Any] = ["model repository"]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse} for code in (400, 404, 409, 501, 503)
}


def add_repository_routes(app: FastAPI, plane: DataPlane) -> None:
    async def index(request: Request) -> Response:
        document = await _body(request, "index")
        ready = document.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidRequest("repository index: 'ready' must be a boolean")
        return Response(orjson.dumps(await plane.repository_index(ready)), media_type="application/json")

    async def load(request: Request, model_name: str) -> Response:
        await plane.load_model(model_name, _parameters(await _body(request, "load"), "load"))
        return Response(status_code=200)

    async def unload(request: Request, model_name: str) -> Response:
        await plane.unload_model(model_name, _parameters(await _body(request, "unload"), "unload"))
        return Response(status_code=200)

    app.add_api_route("/v2/repository/index", index, methods=["POST"], name="repository_index", tags=_TAGS,
                      response_model=list[schemas.RepositoryIndexEntry], responses=_ERRORS,
                      openapi_extra={"requestBody": _request_body(schemas.RepositoryIndexRequest)})
    app.add_api_route("/v2/repository/models/{model_name:path}/load", load, methods=["POST"],
                      name="repository_model_load", tags=_TAGS, responses=_ERRORS,
                      openapi_extra={"requestBody": _request_body(schemas.RepositoryLoadRequest)})
    app.add_api_route("/v2/repository/models/{model_name:path}/unload", unload, methods=["POST"],
                      name="repository_model_unload", tags=_TAGS, responses=_ERRORS,
                      openapi_extra={"requestBody": _request_body(schemas.RepositoryUnloadRequest)})


async def _body(request: Request, what: str) -> dict[str, Any]:
    """The JSON object of the body; an empty body is an empty object (tritonclient sends one for index)."""
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise PayloadTooLarge(f"a repository {what} request body is at most {MAX_BODY} bytes")
        chunks.append(chunk)
    body = b"".join(chunks).strip()
    if not body:
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON in the repository {what} request: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRequest(f"the repository {what} request must be a JSON object")
    return document


def _parameters(document: dict[str, Any], what: str) -> dict[str, Any]:
    unknown = sorted(set(document) - {"parameters"})
    if unknown:
        raise InvalidRequest(f"the repository {what} request has unknown fields {unknown} (only 'parameters')")
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidRequest(f"the repository {what} request's 'parameters' must be a JSON object")
    return parameters


def _request_body(model: type[Any]) -> dict[str, Any]:
    return {"required": False, "content": {"application/json": {"schema": model.model_json_schema()}}}
