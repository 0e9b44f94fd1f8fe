"""The gRPC transport: inference.GRPCInferenceService over grpc.aio, plus grpc.health.v1 and TF Serving's
services (``gateway.tfserving.grpc_servicer``) on the same port.

Each method translates protobuf to the common schema, calls the DataPlane, and maps a
TensorGateError to its status code; nothing here knows a framework.
"""

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.access_log import AccessLog
from gateway.dataplane import DataPlane
from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from gateway.grpc.generated import model_config_pb2
from gateway.grpc.handlers import add_servicer
from gateway.grpc.native.connection import KEEPALIVE_TIMEOUT_S, MAX_PING_STRIKES
from gateway.grpc.native.server import NativeServer
from gateway.protocol.errors import TensorGateError, Unsupported
from gateway.protocol.proto_codec import decode_infer_request, encode_infer_response
from gateway.protocol.system_shm import SystemSharedMemory
from gateway.protocol.types import InferRequest
from gateway.tfserving.grpc_servicer import add_tfserving_services
from gateway.tls import ReloadingContext, ReloadingGrpcCredentials

if TYPE_CHECKING:  # the SDK is imported only when tracing is on
    from gateway.tracing import InferSpan, Tracing

#: Either gRPC server: they register handlers and start and stop alike.
GrpcServer: TypeAlias = grpc.aio.Server | NativeServer
SERVICE_NAME = "inference.GRPCInferenceService"
CUDA_SHM_UNSUPPORTED = Unsupported(
    "CUDA shared memory is not supported on this server; use system shared memory (SystemSharedMemoryRegister)"
)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: TensorGateError) -> NoReturn:
    await context.abort(grpc.StatusCode[exc.grpc_code], exc.message)
    raise AssertionError("unreachable: abort raises")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]  # generated, untyped
    def __init__(self, plane: DataPlane, shm: SystemSharedMemory, tracing: "Tracing | None" = None) -> None:
        self._plane = plane
        self._shm = shm
        self._tracing = tracing

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._plane.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._plane.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        try:
            model = self._plane.model(request.name, request.version or None)
        except TensorGateError as exc:
            await _abort(context, exc)
        return pb.ModelReadyResponse(ready=model.ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self._plane.server_metadata())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        try:
            document = self._plane.model_metadata(request.name, request.version or None)
        except TensorGateError as exc:
            await _abort(context, exc)
        return json_format.ParseDict(document, pb.ModelMetadataResponse())

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        try:
            document = self._plane.model_config(request.name, request.version or None)
        except TensorGateError as exc:
            await _abort(context, exc)
        config = json_format.ParseDict(document, model_config_pb2.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,
                              context: Any) -> pb.RepositoryIndexResponse:
        models = await self._plane.repository_index(request.ready)
        return json_format.ParseDict({"models": models}, pb.RepositoryIndexResponse())

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        if self._tracing is not None:
            return await self._traced_infer(self._tracing, "ModelInfer", request, context)
        try:
            decoded = decode_infer_request(request, self._shm)
            response = await self._plane.infer(decoded, "grpc")
        except TensorGateError as exc:
            await _abort(context, exc)
        try:
            return encode_infer_response(response, self._shm.place_outputs(decoded, response))
        except TensorGateError as exc:
            await _abort(context, exc)
        finally:
            response.done()

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[pb.ModelInferRequest],
                               context: Any) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answer each request of the stream in turn; an error is reported in-stream, not fatal."""
        async for request in request_iterator:
            if self._tracing is not None:
                try:
                    encoded = await self._traced_infer(self._tracing, "ModelStreamInfer", request, context)
                except TensorGateError as exc:
                    yield pb.ModelStreamInferResponse(error_message=exc.message)
                else:
                    yield pb.ModelStreamInferResponse(infer_response=encoded)
                continue
            try:
                decoded = decode_infer_request(request, self._shm)
                response = await self._plane.infer(decoded, "grpc")
                try:
                    encoded = encode_infer_response(response, self._shm.place_outputs(decoded, response))
                finally:
                    response.done()
            except TensorGateError as exc:
                yield pb.ModelStreamInferResponse(error_message=exc.message)
            else:
                yield pb.ModelStreamInferResponse(infer_response=encoded)

    async def _traced_infer(self, tracing: "Tracing", method: str, request: pb.ModelInferRequest,
                            context: Any) -> pb.ModelInferResponse:
        """ModelInfer, or one message of a stream, in its span; ModelInfer aborts on an error, a stream
        gets the TensorGateError back to answer in-stream."""
        traceparent = tracestate = None
        for key, value in context.invocation_metadata() or ():
            if key == "traceparent":
                traceparent = value
            elif key == "tracestate":
                tracestate = value
        span = tracing.start("grpc", method, request.model_name, request.model_version or None, traceparent,
                             tracestate)
        span.request_id(request.id)
        try:
            reply = await self._run_traced(decode_infer_request(request, self._shm), span)
        except TensorGateError as exc:
            span.end(grpc.StatusCode[exc.grpc_code].value[0], exc)
            if method == "ModelInfer":
                await _abort(context, exc)
            raise
        except asyncio.CancelledError:
            span.end(grpc.StatusCode.CANCELLED.value[0], cancelled=True)
            raise
        except Exception as exc:
            span.end(grpc.StatusCode.UNKNOWN.value[0], exc)
            raise
        span.end(grpc.StatusCode.OK.value[0])
        return reply

    async def _run_traced(self, decoded: InferRequest, span: "InferSpan") -> pb.ModelInferResponse:
        response = await self._plane.infer(decoded, "grpc", span.ref)
        span.ran(response)
        try:
            with span.encoding():
                return encode_infer_response(response, self._shm.place_outputs(decoded, response))
        finally:
            response.done()

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        try:
            stats = await self._plane.statistics(request.name or None, request.version or None)
        except TensorGateError as exc:
            await _abort(context, exc)
        return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                                  context: Any) -> pb.RepositoryModelLoadResponse:
        try:
            await self._plane.load_model(request.model_name, _parameters(request.parameters))
        except TensorGateError as exc:
            await _abort(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                                    context: Any) -> pb.RepositoryModelUnloadResponse:
        try:
            await self._plane.unload_model(request.model_name, _parameters(request.parameters))
        except TensorGateError as exc:
            await _abort(context, exc)
        return pb.RepositoryModelUnloadResponse()

    async def SystemSharedMemoryStatus(self, request: pb.SystemSharedMemoryStatusRequest,
                                       context: Any) -> pb.SystemSharedMemoryStatusResponse:
        try:
            regions = self._shm.status(request.name or None)
        except TensorGateError as exc:
            await _abort(context, exc)
        Status = pb.SystemSharedMemoryStatusResponse.RegionStatus
        return pb.SystemSharedMemoryStatusResponse(regions={r["name"]: Status(**r) for r in regions})

    async def SystemSharedMemoryRegister(self, request: pb.SystemSharedMemoryRegisterRequest,
                                         context: Any) -> pb.SystemSharedMemoryRegisterResponse:
        try:
            self._shm.register(request.name, request.key, request.offset, request.byte_size)
        except TensorGateError as exc:
            await _abort(context, exc)
        await self._shm.changed()
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request: pb.SystemSharedMemoryUnregisterRequest,
                                           context: Any) -> pb.SystemSharedMemoryUnregisterResponse:
        self._shm.unregister(request.name or None)
        await self._shm.changed()
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        await _abort(context, CUDA_SHM_UNSUPPORTED)

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        await _abort(context, CUDA_SHM_UNSUPPORTED)

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        await _abort(context, CUDA_SHM_UNSUPPORTED)


def _parameters(parameters: Any) -> dict[str, Any]:
    """A ``map<string, ModelRepositoryParameter>`` as plain values (bool, int, str or bytes)."""
    return {key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
            for key, value in parameters.items()}


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # generated, untyped
    """grpc.health.v1: SERVING when the server is ready, for "" and the inference service."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        if request.service not in ("", SERVICE_NAME):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{request.service}'")
        status = (health_pb2.HealthCheckResponse.SERVING if self._plane.ready()
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        return health_pb2.HealthCheckResponse(status=status)


def create_grpc_server(plane: DataPlane, address: str, max_message_bytes: int, shm: SystemSharedMemory,
                       kind: str, tls: "ReloadingGrpcCredentials | ReloadingContext | None" = None,
                       access_log: AccessLog | None = None, tracing: "Tracing | None" = None,
                       interceptors: Sequence[grpc.aio.ServerInterceptor] = (), *,
                       keepalive_s: float, min_ping_interval_s: float) -> "GrpcServer":
    """A gRPC server with every service bound to ``address`` (not started).

    ``kind``: ``aio`` (grpc.aio) or ``native`` (``gateway.grpc.native``: the same handlers over our own
    HTTP/2). ``shm`` is the system shared-memory registry (by default the one REST shares for ``plane``);
    ``tls``: the reloading TLS of ``gateway.tls`` for that kind, else plaintext. Every v2 and health
    method decodes its own request (INVALID_ARGUMENT when it does not parse) and writes its access line
    when ``access_log`` is given (``gateway.grpc.handlers``); ``tracing``: trace inference requests;
    ``interceptors`` see every call first (``gateway.grpc.access``). ``keepalive_s``: a client silent this long
    is pinged, and dropped when it does not answer (0: never; ``gateway.grpc.native.connection.KEEPALIVE_TIMEOUT_S``).
    ``min_ping_interval_s``: the client's ping policy (0: none; ``gateway.grpc.native.connection.MAX_PING_STRIKES``).
    """
    server: GrpcServer
    if kind == "native":
        server = NativeServer(max_message_bytes, interceptors, keepalive_s, min_ping_interval_s)
    else:
        server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Every frontend process binds the same port; the kernel spreads connections over them.
            ("grpc.so_reuseport", 1),
            # Keepalive as the native server does it: idle connections too (a client gone while idle holds
            # its connection forever otherwise), and as many pings as it takes.
            ("grpc.keepalive_time_ms", int(keepalive_s * 1000) if keepalive_s > 0 else 2**31 - 1),
            ("grpc.keepalive_timeout_ms", int(min(KEEPALIVE_TIMEOUT_S, keepalive_s or KEEPALIVE_TIMEOUT_S) * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # The client's pings, as the native server judges them (grpc's policy: the same rule).
            ("grpc.http2.min_ping_interval_without_data_ms", int(min_ping_interval_s * 1000)),
            ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES if min_ping_interval_s > 0 else 0),
        ])
    add_servicer(server, pb_grpc.add_GRPCInferenceServiceServicer_to_server, InferenceServicer(plane, shm, tracing),
                 access_log)
    add_servicer(server, health_pb2_grpc.add_HealthServicer_to_server, HealthServicer(plane), access_log)
    add_tfserving_services(server, plane, access_log)
    if tls is None:
        server.add_insecure_port(address)
    elif isinstance(server, NativeServer):
        assert isinstance(tls, ReloadingContext), "the native server takes an SSLContext"
        server.add_secure_port(address, tls.context)
    else:
        assert isinstance(tls, ReloadingGrpcCredentials), "grpc.aio takes server credentials"
        server.add_secure_port(address, tls.credentials)
    return server
