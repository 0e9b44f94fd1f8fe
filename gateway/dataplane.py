"""The one transport-free core that REST and gRPC both call.

It answers health and metadata from the model manager's state, and runs inference:
resolve the model version, validate the request against its signature, execute, and
shape the response. Transports only translate their wire format to and from the types in
``gateway.protocol``.
"""

import time
from typing import Any

from gateway import __version__
from gateway.metrics import Metrics
from gateway.protocol.datatypes import datatype_of
from gateway.protocol.errors import InvalidRequest, QueueTimeout, TensorGateError, Unavailable
from gateway.protocol.types import InferOutput, InferRequest, InferResponse
from gateway.repository.config import METADATA_PLATFORM
from gateway.repository.manager import ModelManager, ModelVersion, State
from gateway.repository.signature import TensorSpec
from gateway.validation import validate_request

SERVER_NAME = "tensorgate"
EXTENSIONS = ("binary_tensor_data", "model_configuration", "schedule_policy", "statistics", "system_shared_memory")


class DataPlane:
    """Health, metadata and inference over the models of one ModelManager."""

    def __init__(self, models: ModelManager, metrics: Metrics) -> None:
        self.models = models
        self.metrics = metrics
        self.draining = False
        #: Inference calls in progress (the drain on shutdown waits for it to reach 0).
        self.in_flight = 0

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return not self.draining and self.models.all_ready()

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def model_ready(self, name: str, version: str | None) -> ModelVersion:
        """The version asked about (check ``.state``); NotFound if there is no such model."""
        return self.models.get(name, version)

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        mv = self._ready_version(name, version)
        assert mv.signature is not None
        batch = (-1,) if mv.config.max_batch_size > 0 else ()
        return {
            "name": mv.name,
            "versions": list(mv.versions),
            "platform": METADATA_PLATFORM[mv.config.platform],
            "inputs": [_tensor_metadata(t, batch) for t in mv.signature.inputs],
            "outputs": [_tensor_metadata(t, batch) for t in mv.signature.outputs],
        }

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        """The effective config in the JSON shape of Triton's ModelConfig."""
        mv = self._ready_version(name, version)
        return triton_config(mv)

    def model_index(self) -> list[dict[str, Any]]:
        """Every model version with its state, and the reason when it is not ready."""
        index = []
        for mv in self.models.all_versions():
            item: dict[str, Any] = {"name": mv.name, "version": "" if mv.version is None else str(mv.version),
                                    "state": mv.state.value}
            if mv.reason:
                item["reason"] = mv.reason
            index.append(item)
        return index

    async def infer(self, request: InferRequest, protocol: str) -> InferResponse:
        """Validate, queue, batch and run one request, recording its outcome and latency."""
        started = time.perf_counter_ns()
        model, version, stats = "", "", None
        self.in_flight += 1
        try:
            mv = self.models.get(request.model_name, request.model_version)
            model, version = mv.name, "" if mv.version is None else str(mv.version)  # errors counted for it
            if self.draining:
                raise Unavailable("the server is shutting down; send the request to another replica")
            self._check_ready(mv)
            assert mv.signature is not None and mv.scheduler is not None
            stats = mv.scheduler.stats
            inputs, output_names, rows = validate_request(request, mv.signature, mv.config.max_batch_size, mv.name)
            priority, timeout_s = schedule_parameters(request)
            results = await mv.scheduler.submit(inputs, output_names, rows, priority, timeout_s)
            outputs = [InferOutput(name, datatype_of(results[name].dtype), results[name]) for name in output_names]
        except TensorGateError as exc:
            elapsed = time.perf_counter_ns() - started
            if stats is not None:
                stats.fail.add(elapsed)
            self.metrics.observe_request(model, version, protocol, _outcome(exc), elapsed / 1e9)
            raise
        finally:
            self.in_flight -= 1
        elapsed = time.perf_counter_ns() - started
        stats.success.add(elapsed)
        self.metrics.observe_request(model, version, protocol, "success", elapsed / 1e9)
        return InferResponse(mv.name, version, outputs, request.id)

    def statistics(self, name: str | None, version: str | None) -> list[dict[str, Any]]:
        """Triton-shaped statistics of one model (one or all of its versions), or of every model."""
        if name:
            versions = [self.models.get(name, version)] if version else self.models.versions_of(name)
        else:
            versions = self.models.all_versions()
        return [mv.scheduler.stats.as_dict() for mv in versions if mv.scheduler is not None]

    def _ready_version(self, name: str, version: str | None) -> ModelVersion:
        mv = self.models.get(name, version)
        self._check_ready(mv)
        return mv

    @staticmethod
    def _check_ready(mv: ModelVersion) -> None:
        if mv.state is not State.READY:
            raise Unavailable(f"model {mv.label} is not ready ({mv.state.value}): {mv.reason}")


def _tensor_metadata(spec: TensorSpec, batch: tuple[int, ...]) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": [*batch, *spec.shape]}


def schedule_parameters(request: InferRequest) -> tuple[int | None, float | None]:
    """The request's ``priority`` (1 is highest, 0 the model's default) and ``timeout`` (µs), as Triton reads them."""
    priority = request.parameters.get("priority")
    timeout = request.parameters.get("timeout")
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool) or priority < 0):
        raise InvalidRequest("parameter 'priority' must be a non-negative integer (1 is the highest)")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0):
        raise InvalidRequest("parameter 'timeout' must be a non-negative integer number of microseconds")
    return priority, (timeout / 1e6 if timeout else None)


def _outcome(exc: TensorGateError) -> str:
    if isinstance(exc, QueueTimeout):
        return "timeout"
    if isinstance(exc, Unavailable):
        return "rejected"
    return "client_error" if exc.http_status < 500 else "server_error"


def triton_config(mv: ModelVersion) -> dict[str, Any]:
    config = mv.config
    signature = mv.signature
    inputs = signature.inputs if signature else ()
    outputs = signature.outputs if signature else ()
    policy: dict[str, Any]
    vp = config.version_policy
    if vp.all is not None:
        policy = {"all": {}}
    elif vp.specific is not None:
        policy = {"specific": {"versions": vp.specific.versions}}
    else:
        policy = {"latest": {"num_versions": vp.latest.num_versions if vp.latest else 1}}
    device = config.instances.device
    group: dict[str, Any] = {"name": f"{mv.name}_0", "count": config.instances.count,
                             "kind": "KIND_GPU" if device.startswith("cuda:") else "KIND_CPU"}
    if device.startswith("cuda:"):
        group["gpus"] = [int(device.split(":")[1])]
    document: dict[str, Any] = {
        "name": mv.name,
        "platform": METADATA_PLATFORM[config.platform],
        "backend": config.framework,
        "max_batch_size": config.max_batch_size,
        "input": [_triton_tensor(t) for t in inputs],
        "output": [_triton_tensor(t) for t in outputs],
        "version_policy": policy,
        "instance_group": [group],
        "parameters": {k: {"string_value": str(v)} for k, v in config.parameters.items()},
    }
    batching = config.dynamic_batching
    if batching is not None:
        document["dynamic_batching"] = {
            "preferred_batch_size": batching.preferred_batch_sizes,
            "max_queue_delay_microseconds": int(batching.max_queue_delay_ms * 1000),
            "priority_levels": batching.priority_levels,
            "default_priority_level": batching.default_priority,
            "default_queue_policy": {
                "default_timeout_microseconds": int(batching.default_timeout_ms * 1000),
                "max_queue_size": batching.max_queue_size,
            },
        }
    return document


def _triton_tensor(spec: TensorSpec) -> dict[str, Any]:
    datatype = "STRING" if spec.datatype == "BYTES" else spec.datatype
    return {"name": spec.name, "data_type": f"TYPE_{datatype}", "dims": list(spec.shape)}
