"""What the server's processes agree on: signatures, and the messages that cross between them.

Imported by the supervisor, the frontends and the runtime workers alike, and by nothing that
knows a transport or a framework. Three kinds of conversation use these messages (all framed
by ``gateway.workers.ipc``):

- supervisor -> runtime worker (control): ``LoadModel``, ``WarmUp``, ``UnloadModel``, ``WorkerSnapshot``,
  ``ProcessSnapshot``;
- supervisor <-> frontend (control): ``ModelTable``, ``SharedMemoryRegions``, ``Drain``, ``Stop``,
  ``FrontendSnapshot``, ``ProcessSnapshot`` one way; ``LoadRequest``, ``UnloadRequest``, ``IndexRequest`` (answered by
  ``RepositoryReply``) and ``SharedMemoryRegions`` the other;
- frontend <-> runtime worker (data): ``Submit``, ``Cancel``, ``Release``, ``Failed``, ``Fence``,
  ``StatsQuery`` one way, ``Results`` the other. Tensors travel as ``TensorRef`` into a shared
  arena (``gateway.workers.arena``), or inline where they do not fit one.
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.wire_pickle import by_fields

#: The reason a version shows once a client or the repository unloaded it (Triton's word).
UNLOADED = "unloaded"


def model_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a model (None if it can): a model is a folder directly under the
    repository root, so a request's name is never a path (``a/b``, ``..``) that reaches outside it."""
    if not name:
        return "the model name is empty"
    if name in (".", "..") or any(c in name for c in "/\\\0"):
        return (f"model name {name!r} is not a folder name (no '/', '\\', '.' or '..'): it must name a folder "
                f"directly under the model repository")
    if name.startswith(".") or name == "lost+found":
        return f"model name '{name}' names a folder the repository never serves (hidden, or the file system's)"
    return None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A tensor as served: ``shape`` excludes the batch dimension when the model batches; -1 is variable."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def accepts(self, dims: tuple[int, ...]) -> bool:
        """The one shape rule: same rank, and every fixed dimension equal (-1 accepts any)."""
        return len(dims) == len(self.shape) and all(
            want == -1 or got == want for got, want in zip(dims, self.shape, strict=True))


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


# --- supervisor -> runtime worker ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SchedulerOptions:
    """How one model version is queued and batched (from its config's dynamic_batching)."""

    label: str
    max_batch_size: int
    instances: int = 1
    max_queue_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    #: 0 means the server's default bound (never unbounded).
    max_queue_size: int = 0
    default_timeout_s: float = 0.0
    priority_levels: int = 1
    default_priority: int = 1


@dataclass(frozen=True, slots=True)
class LoadModel:
    """Load one model version into the worker under ``key`` and start its scheduler."""

    key: str
    model_name: str
    path: str
    platform: str
    max_batch_size: int
    device: str
    instances: int
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: list[tuple[str, str]] | None = None
    outputs: list[tuple[str, str]] | None = None
    #: dynamic_batching.preferred_batch_sizes: runtimes that compile per shape (JAX) pad batches to these.
    preferred_batch_sizes: tuple[int, ...] = ()
    scheduling: SchedulerOptions | None = None
    #: The model file inside the version folder, when not the platform's default name.
    filename: str | None = None
    #: The version's number as a string (the key also carries the load's generation).
    version: str = ""


@dataclass(frozen=True, slots=True)
class WarmupInput:
    """How one input of a warm-up sample is filled: ``source`` is 'zero', 'random' or 'file'."""

    name: str
    datatype: str
    #: Without the batch dimension; no variable dimensions.
    shape: tuple[int, ...]
    source: str
    #: The raw tensor file (Triton's layout: little-endian values, BYTES as 4-byte length + bytes).
    file: str = ""


@dataclass(frozen=True, slots=True)
class WarmupSample:
    """One warm-up request: ``batch_size`` rows (ignored when the model does not batch), run ``count`` times."""

    name: str
    batch_size: int
    count: int
    inputs: tuple[WarmupInput, ...]


@dataclass(frozen=True, slots=True)
class WarmUp:
    """Run these samples through the loaded model version ``key`` (its adapter) before it serves."""

    key: str
    samples: tuple[WarmupSample, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UnloadModel:
    """Free the model version ``key``: once every data connection has fenced ``after_generation`` (so no
    frontend can still send it a request), stop taking requests, let the queued and running ones finish,
    then free it."""

    key: str
    after_generation: int = 0


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """Ask a worker for the statistics and queue gauges of every model it hosts."""


@dataclass(slots=True)
class ModelGauges:
    """One hosted model version's statistics (``gateway.scheduling.stats.ModelStats``) and queue state."""

    stats: Any
    queued: int
    inflight: int
    capacity: int


# --- frontend <-> runtime worker ------------------------------------------------------------------


@by_fields
@dataclass(frozen=True, slots=True)
class TensorRef:
    """A tensor's bytes at ``offset`` in the sender's arena: dtype as numpy's ``dtype.str``."""

    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]


#: A tensor on the wire: in an arena, or inline (pickled out of band) when it does not fit one.
WireTensor = TensorRef | np.ndarray


#: A span's context as it travels between processes: (trace id, span id, trace flags).
SpanRef = tuple[int, int, int]


@by_fields
@dataclass(frozen=True, slots=True)
class BatchTrace:
    """What a traced request's batch did (``time.monotonic_ns``, shared by every process on the
    machine): left the queue, started and finished executing; its requests and rows; and the span
    contexts of the traced requests in it (the frontend links the batch span to each)."""

    dispatched_ns: int
    started_ns: int
    finished_ns: int
    requests: int
    rows: int
    links: tuple[SpanRef, ...]


@by_fields
@dataclass(frozen=True, slots=True)
class RequestTrace:
    """A traced request's time in the worker: queued at ``enqueued_ns``, then its ``rows`` ran in ``batch``."""

    enqueued_ns: int
    rows: int
    batch: BatchTrace


@by_fields
@dataclass(frozen=True, slots=True)
class Submit:
    """One validated request for model version ``key``; ``received_ns`` is ``time.monotonic_ns``.
    ``trace``: its server span's context when it is traced (the worker reports its queue and batch
    back in ``Outcome.trace``). ``release``: output blocks the frontend is done with (a ``Release``
    that rides along, so it costs no message of its own)."""

    id: int
    key: str
    inputs: dict[str, WireTensor]
    outputs: list[str]
    rows: int
    priority: int | None
    timeout_s: float | None
    received_ns: int
    trace: SpanRef | None = None
    release: list[int] = field(default_factory=list)


@by_fields
@dataclass(frozen=True, slots=True)
class Cancel:
    """The client of request ``id`` has gone: drop it if it has not been dispatched."""

    id: int


@by_fields
@dataclass(frozen=True, slots=True)
class Release:
    """The frontend has answered these requests: free their outputs' arena blocks."""

    offsets: list[int]


@by_fields
@dataclass(frozen=True, slots=True)
class Failed:
    """A request for ``key`` failed in the frontend (counted in the model's statistics)."""

    key: str
    ns: int


@by_fields
@dataclass(frozen=True, slots=True)
class Fence:
    """The frontend serves from ModelTable ``generation`` on: it sends nothing after this for a key that
    table no longer routes to. Sent on every data connection after each table, and first on a new one."""

    generation: int


@by_fields
@dataclass(frozen=True, slots=True)
class StatsQuery:
    keys: list[str]


@by_fields
@dataclass(frozen=True, slots=True)
class Outcome:
    """One request's answer: its outputs, or the error (``kind`` names a ``TensorGateError`` class);
    ``trace`` for a traced request that ran."""

    id: int
    outputs: dict[str, WireTensor] | None = None
    error_kind: str = ""
    error: str = ""
    trace: RequestTrace | None = None



@by_fields
@dataclass(frozen=True, slots=True)
class Results:
    """The answers of one executed batch (or of rejections) for one frontend, sent as one frame."""

    outcomes: list[Outcome]


# --- supervisor -> frontend -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServedModel:
    """What a frontend knows of one model version: enough to route, validate and describe it."""

    name: str
    version: int | None
    #: Every version of this model the repository serves (strings, for metadata).
    versions: tuple[str, ...]
    state: str
    reason: str
    key: str
    framework: str
    platform: str
    max_batch_size: int
    signature: Signature | None
    #: The model's effective configuration, in the JSON shape of Triton's ModelConfig.
    config: dict[str, Any]
    #: False for what nobody asked to serve (unloaded, or never loaded in explicit mode) and for a
    #: version that failed to load beside versions still serving: these never hold readiness back.
    required: bool = True

    @property
    def ready(self) -> bool:
        return self.state == "READY"

    @property
    def label(self) -> str:
        return f"'{self.name}'" + (f" version {self.version}" if self.version is not None else "")


@dataclass(frozen=True, slots=True)
class ModelTable:
    """Every model version, and where each framework's worker takes data connections."""

    models: tuple[ServedModel, ...]
    workers: dict[str, str]
    #: True once every configured model has been through its first load.
    loaded: bool = False
    #: Increases with every table the supervisor sends (see ``Fence``).
    generation: int = 0
    #: --model-control-mode: in 'explicit' an empty table is a ready server.
    control_mode: str = "none"


@dataclass(frozen=True, slots=True)
class SharedMemoryRegions:
    """Every client shared-memory registration (``system_shm.Registration``), the same in every frontend.

    A frontend sends it to the supervisor after a register or unregister; the supervisor sends
    it to every frontend (and to each new one) before the client gets its answer.
    """

    registrations: list[Any]


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """A client asked a frontend to load (or reload) model ``name``; ``config`` is Triton's JSON override."""

    name: str
    config: str | None = None


@dataclass(frozen=True, slots=True)
class UnloadRequest:
    name: str


@dataclass(frozen=True, slots=True)
class IndexRequest:
    """A client asked for the repository index: the supervisor first looks for model folders added or
    removed since it last looked (the index lists every folder, loaded or not), publishing any change."""


@dataclass(frozen=True, slots=True)
class RepositoryReply:
    """The supervisor has finished (every frontend has the new table), or ``error_kind`` names the
    ``TensorGateError`` class of why not."""

    error_kind: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class Drain:
    """Turn not-ready and refuse new inference requests with 503 (keep listening)."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Close the listeners, giving transports ``grace_s`` to send answers already given, and exit."""

    grace_s: float


@dataclass(frozen=True, slots=True)
class FrontendSnapshot:
    """Ask a frontend for its request metrics and how many requests it has in progress."""


@dataclass(frozen=True, slots=True)
class ProcessSnapshot:
    """Ask a frontend or a runtime worker for its ``process_*`` and ``python_*`` families
    (``gateway.process_metrics``)."""


@dataclass(slots=True)
class FrontendState:
    #: (model, version, protocol) -> (outcome counts, latency histogram counts, latency sum)
    requests: dict[tuple[str, str, str], tuple[dict[str, int], list[int], float]]
    #: Inference calls in progress (REST and gRPC), and HTTP requests in progress (any route,
    #: including those still being received): the drain waits until both are 0.
    inferences: int
    http_requests: int
