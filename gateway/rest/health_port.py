"""The plain-HTTP health port (``--health-port``): ``GET /v2/health/live`` and ``/v2/health/ready``, nothing else.

For probes that cannot do what the main ports ask under mTLS: the kubelet's httpGet, tcpSocket and
gRPC probes present no client certificate. The answers are the frontend's own (the same DataPlane,
so readiness and the drain read the same as on the REST port) and carry two booleans, which is
all the clear text gives away. Every frontend listens on it (SO_REUSEPORT), like the REST port.
"""

from __future__ import annotations

import orjson

from gateway.dataplane import DataPlane
from gateway.protocol.errors import NotFound
from gateway.rest.http_server import HttpServer, Receive, Reply, Scope, Send

__all__ = ["health_server"]

#: Probes send no bodies: anything larger is refused with 413 before it is read.
_MAX_REQUEST_BYTES = 64 * 1024
_PATHS = ("/v2/health/live", "/v2/health/ready")


def health_server(plane: DataPlane) -> HttpServer:
    """An HTTP server (not started) answering the two health routes from ``plane``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        body: dict[str, object]
        if path not in _PATHS:
            status, body = 404, {"error": f"the health port serves {' and '.join(_PATHS)} only"}
        elif scope["method"] not in ("GET", "HEAD"):
            status, body = 405, {"error": f"method {scope['method']} is not allowed on {path}; use GET"}
        elif path == "/v2/health/live":
            status, body = 200, {"live": plane.live()}
        else:
            ready = plane.ready()
            status, body = 200 if ready else 503, {"ready": ready}
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": orjson.dumps(body)})

    async def no_inference(model: str, version: str | None, body: bytes, header_length: str | None,
                           headers: list[tuple[bytes, bytes]]) -> Reply:
        raise NotFound("the health port serves /v2/health/live and /v2/health/ready only; infer on the REST port")

    return HttpServer(app, no_inference, _MAX_REQUEST_BYTES, keep_alive_s=30)
