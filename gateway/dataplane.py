"""The one transport-free core that REST and gRPC both call, in every frontend process.

It answers health and metadata from the latest ModelTable the supervisor published, and runs
inference: resolve the model version, validate the request against its signature, hand it to
the model's runtime worker (where its queue and batcher are), and shape the response. The
response's outputs are views into shared memory until the transport has encoded them and
called ``InferResponse.release``. Transports only translate their wire format to and from the
types in ``gateway.protocol``.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from gateway import __version__
from gateway.contract import (
    UNLOADED,
    IndexRequest,
    LoadRequest,
    ModelTable,
    RepositoryReply,
    ServedModel,
    SpanRef,
    TensorSpec,
    UnloadRequest,
    model_name_problem,
)
from gateway.logs import log_event
from gateway.metrics import RequestMetrics
from gateway.protocol import errors
from gateway.protocol.datatypes import datatype_of
from gateway.protocol.errors import (
    InvalidRequest,
    NotFound,
    QueueTimeout,
    TensorGateError,
    Unavailable,
    Unsupported,
)
from gateway.protocol.types import InferOutput, InferRequest, InferResponse
from gateway.validation import validate_request
from gateway.workers.ipc import CallFailed, ConnectionGone
from gateway.workers.link import WorkerLink

SERVER_NAME = "tensorgate"
log = logging.getLogger("tensorgate.dataplane")
EXTENSIONS = ("binary_tensor_data", "model_configuration", "model_repository", "model_repository(unload_dependents)",
              "schedule_policy", "statistics", "system_shared_memory")

#: Sends a repository change to the supervisor and returns its answer (the frontend's control connection).
ControlCall = Callable[[LoadRequest | UnloadRequest | IndexRequest], Awaitable[RepositoryReply]]


class WorkerLinks:
    """This frontend's data connections, one per framework's worker, (re)connected on first use."""

    def __init__(self, arena_bytes: int) -> None:
        self._arena_bytes = arena_bytes
        self._addresses: dict[str, str] = {}
        self._links: dict[str, WorkerLink] = {}
        self._connecting: dict[str, asyncio.Future[WorkerLink]] = {}
        self._generation = 0

    def update(self, addresses: dict[str, str]) -> None:
        self._addresses = dict(addresses)
        for framework, link in list(self._links.items()):
            if addresses.get(framework) != link.address:
                link.close()
                del self._links[framework]

    def fence(self, generation: int) -> None:
        """After applying table ``generation``: tell every worker this frontend holds a link to (see ``Fence``)."""
        self._generation = generation
        for link in self._links.values():
            link.fence(generation)

    async def get(self, framework: str, model: str) -> WorkerLink:
        link = self._links.get(framework)
        if link is not None and link.connected:
            return link
        address = self._addresses.get(framework)
        if address is None:
            raise Unavailable(f"model '{model}': the {framework} runtime worker is not running; it is being restarted")
        connecting = self._connecting.get(framework)
        if connecting is None:
            connecting = asyncio.ensure_future(self._connect(framework, address))
            self._connecting[framework] = connecting
            connecting.add_done_callback(lambda _: self._connecting.pop(framework, None))
        return await asyncio.shield(connecting)

    def failed(self, framework: str, key: str, ns: int) -> None:
        """Count a request that failed in this frontend in its model's statistics (kept by the worker)."""
        link = self._links.get(framework)
        if link is not None and link.connected:
            link.failed(key, ns)

    async def _connect(self, framework: str, address: str) -> WorkerLink:
        link = WorkerLink(framework, address, self._arena_bytes)
        await link.connect()
        link.fence(self._generation)  # the worker waits for every connection's fence before it unloads
        self._links[framework] = link
        return link


class DataPlane:
    """Health, metadata and inference over the published model table."""

    def __init__(self, metrics: RequestMetrics, links: WorkerLinks, strict_readiness: bool = True) -> None:
        self.metrics = metrics
        self.strict_readiness = strict_readiness
        self.links = links
        self.draining = False
        #: Inference calls in progress (the drain on shutdown waits for it to reach 0).
        self.in_flight = 0
        self._table = ModelTable((), {})
        self._models: dict[str, list[ServedModel]] = {}
        #: The supervisor, for the repository API's load and unload (set by the frontend).
        self.control: ControlCall | None = None

    def update(self, table: ModelTable) -> None:
        """Serve from ``table`` from now on (published by the supervisor on every change), then fence it."""
        if table.generation < self._table.generation:
            return  # an older table overtaken by a newer one
        models: dict[str, list[ServedModel]] = {}
        for model in table.models:
            models.setdefault(model.name, []).append(model)
        self._table, self._models = table, models
        self.links.update(table.workers)
        self.links.fence(table.generation)

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Strict: every model meant to serve is ready (at least one, except in explicit mode). Otherwise:
        the first load of each has finished."""
        if self.draining or not self._table.loaded:
            return False
        if not self.strict_readiness:
            return True
        required = [m for m in self._table.models if m.required]
        return (bool(required) or self._table.control_mode == "explicit") and all(m.ready for m in required)

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def model(self, name: str, version: str | None) -> ServedModel:
        """The version a request names, or the highest ready version (else the highest); NotFound otherwise."""
        versions = self._models.get(name)
        if versions is None:
            raise NotFound(f"unknown model '{name}'")
        if not version:
            for model in reversed(versions):
                if model.ready:
                    return model
            return versions[-1]
        for model in versions:
            if str(model.version) == version:
                return model
        served = ", ".join(str(m.version) for m in versions if m.version is not None) or "none"
        raise NotFound(f"model '{name}' has no version '{version}' (served versions: {served})")

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        model = self.ready_model(name, version)
        assert model.signature is not None
        batch = (-1,) if model.max_batch_size > 0 else ()
        return {
            "name": model.name,
            "versions": list(model.versions),
            "platform": model.platform,
            "inputs": [_tensor_metadata(t, batch) for t in model.signature.inputs],
            "outputs": [_tensor_metadata(t, batch) for t in model.signature.outputs],
        }

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        """The effective config in the JSON shape of Triton's ModelConfig."""
        return self.ready_model(name, version).config

    def model_index(self) -> list[dict[str, Any]]:
        """Every model version with its state, and the reason when it is not ready."""
        index = []
        for model in self._table.models:
            item: dict[str, Any] = {"name": model.name, "version": _version(model), "state": model.state}
            if model.reason:
                item["reason"] = model.reason
            index.append(item)
        return index

    async def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Triton's repository index: every model folder in the repository, each version's state and
        reason; a model that was never loaded by its name alone."""
        if self.control is not None and not self.draining:
            with contextlib.suppress(TensorGateError):  # no supervisor to ask: the table as it is
                await self.control(IndexRequest())  # folders added since: in this frontend's table on return
        index = []
        for model in self._table.models:
            if ready_only and not model.ready:
                continue
            item: dict[str, Any] = {"name": model.name}
            if model.version is not None:
                item["version"] = str(model.version)
            if model.state:
                item["state"], item["reason"] = model.state, model.reason
            index.append(item)
        return index

    async def load_model(self, name: str, parameters: dict[str, Any]) -> None:
        """Triton's repository load: (re)load ``name``, optionally with ``parameters['config']`` (JSON).
        Returns when the model serves in every frontend."""
        await _logged_refusal("model_load_refused", name, self._load_model(name, parameters))

    async def _load_model(self, name: str, parameters: dict[str, Any]) -> None:
        _check_name(name)
        config = None
        for key, value in parameters.items():
            if key == "config":
                if not isinstance(value, str):
                    raise InvalidRequest("load parameter 'config' must be a string: the model configuration as "
                                         "JSON (Triton's ModelConfig)")
                config = value
            elif key.startswith("file:"):
                raise Unsupported(f"load parameter '{key}': file overrides are not supported; put the model's "
                                  f"files in the repository and load it from there")
            else:
                raise InvalidRequest(f"Unrecognized load parameter '{key}' (accepted: config)")
        await self._repository_call(LoadRequest(name, config))

    async def unload_model(self, name: str, parameters: dict[str, Any]) -> None:
        """Triton's repository unload: new requests get 503 at once, those in flight finish."""
        await _logged_refusal("model_unload_refused", name, self._unload_model(name, parameters))

    async def _unload_model(self, name: str, parameters: dict[str, Any]) -> None:
        _check_name(name)
        for key, value in parameters.items():
            if key != "unload_dependents":
                raise InvalidRequest(f"Unrecognized unload parameter '{key}' (accepted: unload_dependents)")
            if not isinstance(value, bool):
                raise InvalidRequest("unload parameter 'unload_dependents' must be a boolean")
        # No model here has dependents (no ensembles), so unload_dependents changes nothing.
        await self._repository_call(UnloadRequest(name))

    async def _repository_call(self, body: LoadRequest | UnloadRequest) -> None:
        if self.control is None:
            raise Unsupported("this server has no supervisor to load or unload models")
        if self.draining:
            raise Unavailable("the server is shutting down; models are not loaded or unloaded any more")
        reply = await self.control(body)
        if reply.error_kind:
            kind = getattr(errors, reply.error_kind, None)
            if isinstance(kind, type) and issubclass(kind, TensorGateError):
                raise kind(reply.error)
            raise TensorGateError(reply.error)

    async def infer(self, request: InferRequest, protocol: str, trace: SpanRef | None = None) -> InferResponse:
        """Validate one request and have its model's worker queue, batch and run it (``trace``: the
        context of its span, when it is traced; the response then says how it was queued and batched)."""
        started = time.monotonic_ns()
        name = version = counted_here = ""
        self.in_flight += 1
        try:
            while True:
                table = self._table
                model = self.model(request.model_name, request.model_version)
                name, version = model.name, _version(model)  # errors are counted for it from here on
                if self.draining:
                    raise Unavailable("the server is shutting down; send the request to another replica")
                _check_ready(model)
                assert model.signature is not None
                counted_here = model.key  # a failure from here is in the model's statistics
                inputs, output_names, rows = validate_request(request, model.signature, model.max_batch_size,
                                                              model.name)
                priority, timeout_s = schedule_parameters(request)
                link = await self.links.get(model.framework, model.name)
                if self._table is table:
                    break
                # A table came while the link connected, and this link fenced it: route by it, since the
                # instance the old table named may be retiring.
            counted_here = ""  # the worker counts whatever happens next
            answer = await link.infer(model.key, model.name, inputs, output_names, rows, priority, timeout_s, started,
                                      trace)
        except TensorGateError as exc:
            elapsed = time.monotonic_ns() - started
            if counted_here:
                self.links.failed(model.framework, counted_here, elapsed)
            self.metrics.observe_request(name, version, protocol, _outcome(exc), elapsed / 1e9)
            raise
        except asyncio.CancelledError:
            # The client hung up (or its gRPC deadline passed): not a server error, and already
            # out of the queue (the link cancelled it there).
            self.metrics.observe_request(name, version, protocol, "cancelled", (time.monotonic_ns() - started) / 1e9)
            log_event(log, "request_cancelled", level=logging.DEBUG, model=name, version=version, protocol=protocol)
            raise
        finally:
            self.in_flight -= 1
        outputs = [InferOutput(n, datatype_of(answer.outputs[n].dtype), answer.outputs[n]) for n in output_names]
        self.metrics.observe_request(name, version, protocol, "success", (time.monotonic_ns() - started) / 1e9)
        return InferResponse(model.name, version, outputs, request.id, release=answer.release, trace=answer.trace)

    async def statistics(self, name: str | None, version: str | None) -> list[dict[str, Any]]:
        """Triton-shaped statistics of one model (one or all of its versions), or of every model."""
        if not name:
            models = list(self._table.models)
        elif version:
            models = [self.model(name, version)]
        else:
            models = self.versions(name)
        loaded = [m for m in models if m.version is not None and m.framework in self._table.workers]
        by_framework: dict[str, list[str]] = {}
        for model in loaded:
            by_framework.setdefault(model.framework, []).append(model.key)
        stats: dict[str, dict[str, Any]] = {}
        for framework, keys in by_framework.items():
            try:
                link = await self.links.get(framework, "")
                stats.update(await link.statistics(keys))
            except (TensorGateError, ConnectionGone, CallFailed):
                continue  # a worker that is restarting has no statistics to report yet
        return [stats[m.key] for m in loaded if m.key in stats]

    def versions(self, name: str) -> list[ServedModel]:
        """Every version of model ``name`` in the table, ascending; NotFound for an unknown model."""
        self.model(name, None)  # NotFound for an unknown model
        return list(self._models[name])

    def ready_model(self, name: str, version: str | None) -> ServedModel:
        """The version ``model(name, version)`` resolves to, if it is ready; NotFound or Unavailable otherwise."""
        model = self.model(name, version)
        _check_ready(model)
        return model


async def _logged_refusal(event: str, model: str, call: Coroutine[Any, Any, None]) -> None:
    """Run a repository call; a refusal is logged (one line, with its status) and raised."""
    try:
        await call
    except TensorGateError as exc:
        log_event(log, event, level=logging.WARNING, model=model, status=exc.http_status, reason=exc.message)
        raise


def _check_ready(model: ServedModel) -> None:
    if model.ready:
        return
    if not model.state:
        raise Unavailable(f"model '{model.name}' is not loaded (the server runs in explicit model control mode: "
                          f"load it with POST /v2/repository/models/{model.name}/load)")
    if model.reason == UNLOADED:
        raise Unavailable(f"model '{model.name}' is unloaded: it has no available versions")
    raise Unavailable(f"model {model.label} is not ready ({model.state}): {model.reason}")


def _check_name(name: str) -> None:
    problem = model_name_problem(name)
    if problem is not None:
        raise InvalidRequest(problem)


def _version(model: ServedModel) -> str:
    return "" if model.version is None else str(model.version)


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
