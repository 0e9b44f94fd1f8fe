"""``POST /v2/models/{m}[/versions/{v}]/infer``: the one implementation of the REST inference route.

The REST port's HTTP server (``gateway.rest.http_server``) calls it directly for every inference
request, past FastAPI's per-request machinery; the FastAPI app's route of the same path calls it
too, so the OpenAPI document describes exactly what is served.
"""

from gateway.dataplane import DataPlane
from gateway.protocol.json_codec import binary_output_names, decode_request, encode_response
from gateway.protocol.system_shm import SystemSharedMemory
from gateway.rest.body import split_body
from gateway.rest.http_server import Reply


class InferRoute:
    """Decode the body, run the request through the DataPlane, encode the reply."""

    def __init__(self, plane: DataPlane, shm: SystemSharedMemory) -> None:
        self._plane = plane
        self._shm = shm

    async def __call__(self, model: str, version: str | None, body: bytes, header_length: str | None) -> Reply:
        header, binary = split_body(body, header_length)
        request = decode_request(header, binary, model, version, self._shm)
        response = await self._plane.infer(request, "rest")
        try:
            placed = self._shm.place_outputs(request, response)
            names = [o.name for o in response.outputs]
            payload, json_length = encode_response(response, binary_output_names(request, names), placed)
        finally:
            response.done()  # the outputs were views into shared memory; the payload is a copy
        if json_length is None:
            return Reply(200, b"application/json", payload, None, response.model_version, request.id or "")
        return Reply(200, b"application/octet-stream", payload, json_length, response.model_version, request.id or "")
