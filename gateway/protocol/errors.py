"""One exception hierarchy for every failure a client can see.

Each class fixes its HTTP status and its gRPC status code, so both transports map an
error the same way and a new error kind is one class here, never a branch in a handler::

    TensorGateError          500  INTERNAL            (a bug or an unexpected failure)
    ├── InvalidRequest       400  INVALID_ARGUMENT    (the request does not fit the model or the protocol)
    │   ├── AlreadyExists    400  ALREADY_EXISTS      (a shared-memory region of that name is registered)
    │   └── LimitReached     400  RESOURCE_EXHAUSTED  (no room for one more shared-memory region)
    ├── NotFound             404  NOT_FOUND           (no such model or version)
    ├── Conflict             409  FAILED_PRECONDITION (the repository's content refuses the change: a broken
    │                                                  config, no version folder, a model file that does not load)
    ├── PayloadTooLarge      413  RESOURCE_EXHAUSTED  (the body is over the configured limit)
    ├── Unsupported          501  UNIMPLEMENTED       (a valid request for a feature we do not offer)
    ├── Unavailable          503  UNAVAILABLE         (model not ready, worker gone, server draining)
    │   └── QueueTimeout     503  DEADLINE_EXCEEDED   (the request waited in the queue past its timeout)
    └── InferenceFailed      500  INTERNAL            (the model itself raised while executing)

The gRPC code is kept as the name of a ``grpc.StatusCode`` member so this module stays
free of transport imports.
"""


class TensorGateError(Exception):
    """Base of every error that is reported to a client."""

    http_status: int = 500
    grpc_code: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(TensorGateError):
    """The request is malformed or does not match the model's signature."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class AlreadyExists(InvalidRequest):
    """The name is taken (Triton answers a duplicate registration the same way: 400 / ALREADY_EXISTS)."""

    grpc_code = "ALREADY_EXISTS"


class LimitReached(InvalidRequest):
    """A configured bound (e.g. the number of shared-memory regions) would be exceeded."""

    grpc_code = "RESOURCE_EXHAUSTED"


class NotFound(TensorGateError):
    """The model or version named by the request does not exist."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class Conflict(TensorGateError):
    """The request is well formed, but what the repository holds prevents it (e.g. a load whose config is broken)."""

    http_status = 409
    grpc_code = "FAILED_PRECONDITION"


class PayloadTooLarge(TensorGateError):
    """The request body exceeds the server's configured maximum size."""

    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class Unsupported(TensorGateError):
    """The request asks for a protocol feature this server does not implement."""

    http_status = 501
    grpc_code = "UNIMPLEMENTED"


class Unavailable(TensorGateError):
    """The server cannot take the request now; retrying later may succeed."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class QueueTimeout(Unavailable):
    """The request's timeout expired while it was queued; it was never executed."""

    grpc_code = "DEADLINE_EXCEEDED"


class InferenceFailed(TensorGateError):
    """The model raised while executing a batch."""

    http_status = 500
    grpc_code = "INTERNAL"
