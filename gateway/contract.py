"""What the server's processes agree on: signatures, and the messages that cross between them.

Imported by the supervisor, the frontends and the runtime workers alike, and by nothing that
knows a transport or a framework. Three kinds of conversation use these messages (all framed
by ``gateway.workers.ipc``):

- supervisor -> runtime worker (control): ``LoadModel``, ``UnloadModel``, ``WorkerSnapshot``;
- supervisor <-> frontend (control): ``ModelTable``, ``SharedMemoryRegions``, ``Drain``, ``Stop``,
  ``FrontendSnapshot``;
- frontend <-> runtime worker (data): ``Submit``, ``Cancel``, ``Release``, ``Failed``,
  ``StatsQuery`` one way, ``Results`` the other. Tensors travel as ``TensorRef`` into a shared
  arena (``gateway.workers.arena``), or inline where they do not fit one.
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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


@dataclass(frozen=True, slots=True)
class UnloadModel:
    """Drain the model version's queue, then free it."""

    key: str


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


@dataclass(frozen=True, slots=True)
class TensorRef:
    """A tensor's bytes at ``offset`` in the sender's arena: dtype as numpy's ``dtype.str``."""

    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]


#: A tensor on the wire: in an arena, or inline (pickled out of band) when it does not fit one.
WireTensor = TensorRef | np.ndarray


@dataclass(frozen=True, slots=True)
class Submit:
    """One validated request for model version ``key``; ``received_ns`` is ``time.monotonic_ns``."""

    id: int
    key: str
    inputs: dict[str, WireTensor]
    outputs: list[str]
    rows: int
    priority: int | None
    timeout_s: float | None
    received_ns: int


@dataclass(frozen=True, slots=True)
class Cancel:
    """The client of request ``id`` has gone: drop it if it has not been dispatched."""

    id: int


@dataclass(frozen=True, slots=True)
class Release:
    """The frontend has answered these requests: free their outputs' arena blocks."""

    offsets: list[int]


@dataclass(frozen=True, slots=True)
class Failed:
    """A request for ``key`` failed in the frontend (counted in the model's statistics)."""

    key: str
    ns: int


@dataclass(frozen=True, slots=True)
class StatsQuery:
    keys: list[str]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request's answer: its outputs, or the error (``kind`` names a ``TensorGateError`` class)."""

    id: int
    outputs: dict[str, WireTensor] | None = None
    error_kind: str = ""
    error: str = ""


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


@dataclass(frozen=True, slots=True)
class SharedMemoryRegions:
    """Every client shared-memory registration (``system_shm.Registration``), the same in every frontend.

    A frontend sends it to the supervisor after a register or unregister; the supervisor sends
    it to every frontend (and to each new one) before the client gets its answer.
    """

    registrations: list[Any]


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


@dataclass(slots=True)
class FrontendState:
    #: (model, version, protocol) -> (outcome counts, latency histogram counts, latency sum)
    requests: dict[tuple[str, str, str], tuple[dict[str, int], list[int], float]]
    #: Inference calls in progress (REST and gRPC), and HTTP requests in progress (any route,
    #: including those still being received): the drain waits until both are 0.
    inferences: int
    http_requests: int
