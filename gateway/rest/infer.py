"""``POST /v2/models/{m}[/versions/{v}]/infer``: the one implementation of the REST inference route.

The REST port's HTTP server (``gateway.rest.http_server``) calls it directly for every inference
request, past FastAPI's per-request machinery; the FastAPI app's route of the same path calls it
too, so the OpenAPI document describes exactly what is served. With tracing on, a request takes
the traced twin of the path, which adds the request's spans (``gateway.tracing``).
"""

import asyncio
from typing import TYPE_CHECKING

from gateway.dataplane import DataPlane
from gateway.protocol.errors import TensorGateError
from gateway.protocol.json_codec import binary_output_names, decode_request, encode_response
from gateway.protocol.system_shm import SystemSharedMemory
from gateway.protocol.types import InferRequest, InferResponse
from gateway.rest.body import split_body
from gateway.rest.http_server import Reply, header_value

if TYPE_CHECKING:  # the SDK is imported only when tracing is on
    from gateway.tracing import Tracing


class InferRoute:
    """Decode the body, run the request through the DataPlane, encode the reply."""

    def __init__(self, plane: DataPlane, shm: SystemSharedMemory, tracing: "Tracing | None" = None) -> None:
        self._plane = plane
        self._shm = shm
        self._tracing = tracing

    async def __call__(self, model: str, version: str | None, body: bytes, header_length: str | None,
                       headers: list[tuple[bytes, bytes]]) -> Reply:
        if self._tracing is not None:
            return await self._traced(self._tracing, model, version, body, header_length, headers)
        header, binary = split_body(body, header_length)
        request = decode_request(header, binary, model, version, self._shm)
        return self._encode(request, await self._plane.infer(request, "rest"))

    async def _traced(self, tracing: "Tracing", model: str, version: str | None, body: bytes,
                      header_length: str | None, headers: list[tuple[bytes, bytes]]) -> Reply:
        span = tracing.start("rest", "POST", model, version, header_value(headers, b"traceparent"),
                             header_value(headers, b"tracestate"))
        try:
            header, binary = split_body(body, header_length)
            request = decode_request(header, binary, model, version, self._shm)
            span.request_id(request.id)
            response = await self._plane.infer(request, "rest", span.ref)
            span.ran(response)
            with span.encoding():
                reply = self._encode(request, response)
        except TensorGateError as exc:
            span.end(exc.http_status, exc)
            raise
        except asyncio.CancelledError:
            span.end(None, cancelled=True)
            raise
        except Exception as exc:
            span.end(500, exc)
            raise
        span.end(reply.status)
        return reply

    def _encode(self, request: InferRequest, response: InferResponse) -> Reply:
        try:
            placed = self._shm.place_outputs(request, response)
            names = [o.name for o in response.outputs]
            payload, json_length = encode_response(response, binary_output_names(request, names), placed)
        finally:
            response.done()  # the outputs were views into shared memory; the payload is a copy
        if json_length is None:
            return Reply(200, b"application/json", payload, None, response.model_version, request.id or "")
        return Reply(200, b"application/octet-stream", payload, json_length, response.model_version, request.id or "")

