"""TF Serving's gRPC API on the gRPC port: tensorflow.serving.PredictionService and ModelService.

``Predict`` decodes each TensorProto, runs the request through the DataPlane (same validation,
queue and batcher as ModelInfer), and answers with ``tensor_content`` as TF Serving does.
``GetModelMetadata`` answers the ``signature_def`` field with a SignatureDefMap in an Any;
``GetModelStatus`` answers every version's state. Errors carry TensorGate's status codes,
which are TF Serving's for the same errors (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, ...).
"""

from typing import Any, NoReturn

import grpc
from google.protobuf import json_format

from gateway.access_log import AccessLog
from gateway.dataplane import DataPlane
from gateway.grpc.handlers import HandlerRegistry, add_servicer
from gateway.protocol.errors import InvalidRequest, TensorGateError
from gateway.tfserving import predict
from gateway.tfserving.generated import tf_serving_apis_pb2 as pb
from gateway.tfserving.generated import tf_serving_apis_pb2_grpc as pb_grpc
from gateway.tfserving.tensor_proto import decode_tensor, encode_tensor

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: TensorGateError) -> NoReturn:
    await context.abort(grpc.StatusCode[exc.grpc_code], exc.message)
    raise AssertionError("unreachable: abort raises")


def _target(spec: pb.ModelSpec) -> tuple[str, str | None, str | None]:
    """The model name, version (None: the latest) and label a ModelSpec names."""
    choice = spec.WhichOneof("version_choice")
    version = str(spec.version.value) if choice == "version" else None
    return spec.name, version, spec.version_label if choice == "version_label" else None


def _spec(model_name: str, version: str, signature_name: str) -> pb.ModelSpec:
    spec = pb.ModelSpec(name=model_name, signature_name=signature_name)
    if version:
        spec.version.value = int(version)
    return spec


class PredictionServicer(pb_grpc.PredictionServiceServicer):  # type: ignore[misc]  # generated, untyped
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    async def Predict(self, request: pb.PredictRequest, context: Any) -> pb.PredictResponse:
        try:
            name, version, label = _target(request.model_spec)
            served = predict.resolve(self._plane, name, version, label)
            predict.check_signature(served, request.model_spec.signature_name)
            inputs = {}
            for key, tensor in request.inputs.items():
                spec = predict.input_spec(served, key)
                inputs[spec.name] = decode_tensor(tensor, key)
            response = await predict.predict(self._plane, served.name, version, inputs, list(request.output_filter),
                                             "grpc")
        except TensorGateError as exc:
            await _abort(context, exc)
        try:
            signature = request.model_spec.signature_name or predict.signature_name(served)
            reply = pb.PredictResponse(model_spec=_spec(response.model_name, response.model_version, signature))
            for output in response.outputs:
                reply.outputs[output.name].CopyFrom(encode_tensor(output.data, output.datatype))
        finally:
            response.done()
        return reply

    async def GetModelMetadata(self, request: pb.GetModelMetadataRequest, context: Any) -> pb.GetModelMetadataResponse:
        try:
            fields = list(request.metadata_field)
            if not fields:
                raise InvalidRequest("GetModelMetadataRequest must specify at least one metadata_field "
                                     f"('{predict.SIGNATURE_DEF}')")
            for field in fields:
                if field != predict.SIGNATURE_DEF:
                    raise InvalidRequest(f"Metadata field {field} is not supported (the one there is: "
                                         f"'{predict.SIGNATURE_DEF}')")
            served = predict.resolve(self._plane, *_target(request.model_spec))
            predict.check_signature(served, request.model_spec.signature_name)
        except TensorGateError as exc:
            await _abort(context, exc)
        signatures = json_format.ParseDict(predict.signature_def_map(served), pb.SignatureDefMap())
        reply = pb.GetModelMetadataResponse(model_spec=_spec(served.name, str(served.version),
                                                             request.model_spec.signature_name))
        reply.metadata[predict.SIGNATURE_DEF].Pack(signatures)
        return reply


class ModelServicer(pb_grpc.ModelServiceServicer):  # type: ignore[misc]  # generated, untyped
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    async def GetModelStatus(self, request: pb.GetModelStatusRequest, context: Any) -> pb.GetModelStatusResponse:
        try:
            document = predict.model_status(self._plane, *_target(request.model_spec))
        except TensorGateError as exc:
            await _abort(context, exc)
        return json_format.ParseDict(document, pb.GetModelStatusResponse())


def add_tfserving_services(server: HandlerRegistry, plane: DataPlane, access_log: AccessLog | None = None) -> None:
    """Serve TF Serving's two services from ``server`` (beside the v2 service, on the same port), decoding
    and logging each call as the v2 methods are (``gateway.grpc.handlers``)."""
    add_servicer(server, pb_grpc.add_PredictionServiceServicer_to_server, PredictionServicer(plane), access_log)
    add_servicer(server, pb_grpc.add_ModelServiceServicer_to_server, ModelServicer(plane), access_log)
