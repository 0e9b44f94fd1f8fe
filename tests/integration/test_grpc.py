"""The gRPC transport with our own generated stubs: health, metadata, config, index, streams."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from gateway.tfserving.generated import tf_serving_apis_pb2 as tfs_pb
from tests.server import ServerProcess


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_address) as c:
        yield c


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def test_standard_health_service(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_live_ready_and_metadata(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="versioned", version="1")).ready
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="versioned"))
    assert list(metadata.versions) == ["1", "2"]
    assert metadata.inputs[0].name == "x" and list(metadata.inputs[0].shape) == [-1, 4]
    assert stub.ServerMetadata(pb.ServerMetadataRequest()).name == "tensorgate"


def test_model_config_and_repository_index(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    config = stub.ModelConfig(pb.ModelConfigRequest(name="versioned")).config
    assert config.max_batch_size == 4 and list(config.version_policy.specific.versions) == [1, 2]
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
    assert {(m.name, m.version) for m in index.models} >= {("versioned", "1"), ("versioned", "2")}


def test_load_and_unload_are_refused_outside_explicit_mode(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """The shared server runs in the default mode, none: Triton's status and words."""
    for method, request in ((stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="versioned")),
                            (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="versioned"))):
        with pytest.raises(grpc.RpcError) as info:
            method(request)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "explicit model load / unload is not allowed if polling is enabled" in (info.value.details() or "")
        assert "--model-control-mode none" in (info.value.details() or "")
    assert stub.ModelReady(pb.ModelReadyRequest(name="versioned")).ready


def test_stream_reports_errors_in_stream(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    def requests() -> Iterator[pb.ModelInferRequest]:
        for shape in ([1, 4], [1, 3], [2, 4]):
            request = pb.ModelInferRequest(model_name="versioned", id=str(shape))
            request.inputs.add(name="x", datatype="FP32", shape=shape,
                               contents=pb.InferTensorContents(fp32_contents=[0] * int(np.prod(shape))))
            yield request

    replies = list(stub.ModelStreamInfer(requests()))
    assert [bool(r.error_message) for r in replies] == [False, True, False]
    assert replies[2].infer_response.id == "[2, 4]"
    assert "shape" in replies[1].error_message


def test_metrics_count_requests(server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="versioned")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4], contents=pb.InferTensorContents(fp32_contents=[0] * 4))
    stub.ModelInfer(request)
    text = httpx.get(server.metrics_url).text
    assert 'tensorgate_requests_total{model="versioned",outcome="success",protocol="grpc",version="2"}' in text
    assert 'tensorgate_model_ready{model="versioned",version="1"} 1.0' in text


def _garbage_call(channel: grpc.Channel, service: str, method: MethodDescriptor) -> grpc.RpcError:
    """``method`` called with bytes that parse as no message."""
    path, garbage = f"/{service}/{method.name}", b"\xff\xff\xff\xff\x0f not a message"
    with pytest.raises(grpc.RpcError) as info:
        if method.client_streaming:
            list(channel.stream_stream(path, request_serializer=bytes, response_deserializer=bytes)(
                iter([garbage]), timeout=30))
        elif method.server_streaming:
            list(channel.unary_stream(path, request_serializer=bytes, response_deserializer=bytes)(garbage, timeout=30))
        else:
            channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)(garbage, timeout=30)
    assert isinstance(info.value, grpc.RpcError)
    return info.value

def test_undecodable_messages_get_invalid_argument_on_every_method(channel: grpc.Channel,
                                                                  stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """grpc.aio would answer UNKNOWN; every method decodes its own request and answers INVALID_ARGUMENT."""
    services = [pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
                health_pb2.DESCRIPTOR.services_by_name["Health"],
                tfs_pb.DESCRIPTOR.services_by_name["PredictionService"],
                tfs_pb.DESCRIPTOR.services_by_name["ModelService"]]
    called = []
    for service in services:
        for method in service.methods:
            error = _garbage_call(channel, service.full_name, method)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method.name, error.code(), error.details())
            assert "does not parse" in (error.details() or "") and method.input_type.full_name in error.details()
            called.append(method.name)
    assert {"ModelInfer", "ModelStreamInfer", "ServerLive", "RepositoryModelLoad", "Check", "Watch", "Predict",
            "GetModelStatus"} <= set(called)
    assert stub.ServerLive(pb.ServerLiveRequest()).live  # still serving
