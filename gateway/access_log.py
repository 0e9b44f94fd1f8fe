"""The access log (``--access-log``): one ``event=request`` line per REST or gRPC request.

Each line names the model and version (where the request names one), the protocol, the endpoint
(the REST path without its query, or the gRPC method), the status (HTTP status, or gRPC code
name), the duration in milliseconds (from the first byte of the request, REST, or the call's
start, gRPC, to the answer), the request id (the v2 ``id`` the client gave, else empty), the
client's address, and the trace id of a W3C ``traceparent`` header or metadata entry. Never a
tensor, a body, a query string, or any header's value but the trace id: nothing a client put in
a key or a credential reaches the log.

When off, the transports hold ``None`` instead of an ``AccessLog`` and skip it with one test.
Lines go to the ``tensorgate.access`` logger at INFO, which stays enabled when ``--log-level``
is higher: asking for the access log is asking for its lines.
"""

import logging

from gateway.logs import log_event
from gateway.tracecontext import parse_traceparent

log = logging.getLogger("tensorgate.access")

#: HTTP status logged for a request whose client went away before its answer (nginx's convention).
CLIENT_CLOSED = 499



def trace_id(traceparent: str | bytes | None) -> str:
    """The trace id of a W3C ``traceparent`` value, or "" when it is absent or invalid (the same rules
    tracing applies: ``gateway.tracecontext``)."""
    parent = parse_traceparent(traceparent)
    return "" if parent is None else parent.trace_id_hex


def model_of_path(path: str) -> tuple[str, str]:
    """(model, version) of a ``/v2/models/{m}[/versions/{v}]...`` or ``/v2/repository/models/{m}/...``
    path, else ("", "")."""
    for prefix in ("/v2/models/", "/v2/repository/models/"):
        if path.startswith(prefix):
            parts = path[len(prefix):].split("/")
            return parts[0], parts[2] if len(parts) >= 3 and parts[1] == "versions" else ""
    return "", ""

class AccessLog:
    """Writes the access lines of one frontend."""

    def __init__(self) -> None:
        log.setLevel(logging.INFO)

    def request(self, protocol: str, endpoint: str, model: str, version: str, status: int | str, seconds: float,
                request_id: str, client: str, trace: str) -> None:
        log_event(log, "request", protocol=protocol, endpoint=endpoint, model=model, version=version, status=status,
                  duration_ms=seconds * 1000, request_id=request_id, client=client, trace_id=trace)
