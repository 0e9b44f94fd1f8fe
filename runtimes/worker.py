"""The runtime worker process: one framework's models, their queues and batchers, and the
data connections of every frontend.

Started by the supervisor as ``python -m runtimes.worker FRAMEWORK ADDRESS LOG_LEVEL LOG_FORMAT CONTROL_FD``:
CONTROL_FD is its end of a socket pair with the supervisor (loads, unloads, snapshots), ADDRESS
an abstract Unix socket where frontends connect to send requests. The main thread runs the event
loop: the control calls, every frontend's requests, and one scheduler per model version, so a
model's batches are formed from all frontends' requests together. Loads run on one loader
thread (a slow load never blocks the batches of models already loaded); each model executes on
its own pool of ``instances`` threads, and the frameworks release the GIL while they compute,
so the loop keeps receiving requests and sending answers while a batch runs: the next batch is
queued by the time the previous one finishes.

Request tensors are read in place from the frontend's shared arena; outputs are copied once
into the arena this worker fills for that frontend, and the frontend frees them when it has
answered. The process exits when the supervisor closes the control socket.

Models change while serving: the supervisor loads a new instance of a version under a new key
beside the one in use, warms it up (``WarmUp``: samples through the adapter), switches the
frontends' tables, and then unloads the old instance with ``UnloadModel(key, after_generation)``.
Every frontend sends ``Fence(generation)`` on its data connection after applying a table, so a
request it wrote for the old key before switching precedes the fence in the same stream. The
unload waits until every live data connection has fenced that generation (a connection that
opens later already has the new table and fences first thing), and only then stops taking
requests for the key, lets the queued and running ones finish, and frees the model.
"""

import asyncio
import contextlib
import functools
import gc
import importlib
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import uvloop

from gateway.contract import (
    Cancel,
    Failed,
    Fence,
    LoadModel,
    ModelGauges,
    Outcome,
    ProcessSnapshot,
    Release,
    Results,
    SchedulerOptions,
    Signature,
    StatsQuery,
    Submit,
    TensorRef,
    UnloadModel,
    WarmUp,
    WireTensor,
    WorkerSnapshot,
)
from gateway.logs import configure, log_event
from gateway.process_metrics import own_families
from gateway.protocol.errors import InferenceFailed, InvalidRequest, TensorGateError
from gateway.scheduling.scheduler import ExecuteResult, Inputs, Pending, Scheduler
from gateway.scheduling.stats import ModelStats, failure_reason
from gateway.workers.arena import Arena
from gateway.workers.ipc import CallFailed, Failure, Peer
from gateway.workers.link import HELLO, socket_address
from runtimes.base import InvalidInput, ModelLoadError, RuntimeAdapter
from runtimes.padding import PARAMETER as PADDING
from runtimes.padding import gather_padded, padding_sizes, unpadded
from runtimes.warmup import sample_arrays

#: The adapter class for each platform, as "module:Class", imported on first use.
ADAPTERS = {
    "onnx": "runtimes.onnx:OnnxRuntimeAdapter",
    "torchscript": "runtimes.torchscript:TorchScriptAdapter",
    "torch_export": "runtimes.torch_export:TorchExportAdapter",
    "torch_aoti": "runtimes.torch_aoti:TorchAotiAdapter",
    "savedmodel": "runtimes.savedmodel:SavedModelAdapter",
    "jax": "runtimes.jax:JaxAdapter",
    "tflite": "runtimes.tflite:TFLiteAdapter",
}

log = logging.getLogger("tensorgate.worker")

#: Batches of a model whose runs average less than this run on the event loop (no thread hand-off).
INLINE_BELOW_S = 200e-6


class HostedModel:
    """One loaded model version: its adapter, its instances' threads and its scheduler."""

    def __init__(self, spec: LoadModel, adapter: RuntimeAdapter, padding: tuple[int, ...] = ()) -> None:
        self.spec = spec
        self.adapter = adapter
        #: The sizes a batch is padded to (``parameters.pad_batches_to``; runtimes/padding.py).
        self._padding = padding
        self.unloading = False
        self._pool = ThreadPoolExecutor(max_workers=spec.instances, thread_name_prefix=spec.key)
        options = spec.scheduling or SchedulerOptions(f"'{spec.model_name}'", spec.max_batch_size, spec.instances)
        version = spec.version or spec.key.rsplit(":", 1)[-1]
        self.scheduler = Scheduler(options, self._execute, ModelStats(spec.model_name, version), self._threaded)
        #: Mean run time of a batch (an exponential average), and whether batches run on the loop.
        self._run_s: float | None = None
        self._inline = False

    def _execute(self, batch: list[Inputs], outputs: list[str]) -> ExecuteResult | Awaitable[ExecuteResult]:
        """Run the batch on an instance thread, or right here when this model's batches are very fast.

        Handing a batch to a thread and back costs two wake-ups (~50 µs here): more than a tiny
        model's whole run. A batch that takes less than ``INLINE_BELOW_S`` holds the loop no longer
        than a thread hand-off would, so it runs on the loop, at once (its answers leave in the same
        turn of the loop as the request that started it). Slower models keep the loop free.
        """
        if self._inline:
            return self._timed(self._run(batch, outputs))
        return self._threaded(batch, outputs)

    async def _threaded(self, batch: list[Inputs], outputs: list[str]) -> ExecuteResult:
        """On an instance thread; its end posted straight back to the loop (``run_in_executor`` chains a
        second future through Python callbacks on both sides: ~12 µs more per batch here)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[ExecuteResult] = loop.create_future()

        def job() -> None:
            try:
                result = self._run(batch, outputs)
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, done, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, result, None)

        self._pool.submit(job)
        return self._timed(await done)

    def _timed(self, result: ExecuteResult) -> ExecuteResult:
        """Keep the mean run time, and decide from it where the next batch runs."""
        elapsed = (result.finished_ns - result.started_ns) / 1e9
        self._run_s = elapsed if self._run_s is None else 0.9 * self._run_s + 0.1 * elapsed
        self._inline = self._run_s < INLINE_BELOW_S and self.spec.device == "cpu"
        return result

    def _run(self, batch: list[Inputs], outputs: list[str]) -> ExecuteResult:
        """On an instance thread: gather the batch, run it, and time the run."""
        started = time.monotonic_ns()
        name = self.spec.model_name
        try:
            if self._padding:
                inputs, rows, size = gather_padded(batch, self._padding, self.adapter.gather)
                result = unpadded(self.adapter.execute(inputs, outputs), rows, size)
            else:
                result = self.adapter.execute(self.adapter.gather(batch), outputs)
        except InvalidInput as exc:
            raise InvalidRequest(f"model '{name}': {exc}") from None
        except Exception as exc:
            log_event(log, "execute_failed", level=logging.ERROR, model=self.spec.key,
                      error=f"{type(exc).__name__}: {exc}")
            raise InferenceFailed(f"model '{name}' failed while executing: {type(exc).__name__}: {exc}") from None
        return ExecuteResult(result, started, time.monotonic_ns())

    async def warm_up(self, body: WarmUp) -> None:
        """Run each sample ``count`` times through the adapter, on the instances' threads, before serving
        (gathered as a batch is, so that a GPU's pinned staging memory is allocated before the first request)."""
        loop = asyncio.get_running_loop()
        for sample in body.samples:
            try:
                arrays = sample_arrays(sample, self.spec.max_batch_size > 0)
                for _ in range(sample.count):
                    await loop.run_in_executor(self._pool, self._warm_once, arrays, list(body.outputs))
            except Exception as exc:
                raise CallFailed(Failure("invalid", f"{self.spec.path}: warm-up sample '{sample.name}' failed: "
                                                    f"{type(exc).__name__}: {exc}")) from None

    def _warm_once(self, arrays: Inputs, outputs: list[str]) -> None:
        self.adapter.execute(self.adapter.gather([arrays]), outputs)

    async def close(self) -> None:
        """Let queued and running batches finish, then free the model."""
        self.unloading = True
        while self.scheduler.busy:
            await asyncio.sleep(0.01)
        self._pool.shutdown(wait=False)
        self.adapter.close()


class Host:
    """The models of this worker, answering the supervisor's control calls."""

    def __init__(self, framework: str) -> None:
        self.framework = framework
        self.models: dict[str, HostedModel] = {}
        #: Every frontend's data connection, with the last table generation it fenced.
        self.connections: set[FrontendConnection] = set()
        self._fences = asyncio.Event()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loader")

    def handle_control(self, body: Any) -> Any:
        if isinstance(body, LoadModel):
            return self._load(body)
        if isinstance(body, WarmUp):
            return self._warm_up(body)
        if isinstance(body, UnloadModel):
            return self._unload(body.key, body.after_generation)
        if isinstance(body, ProcessSnapshot):
            return own_families()
        if isinstance(body, WorkerSnapshot):
            return {key: ModelGauges(m.scheduler.stats, m.scheduler.queued_requests, m.scheduler.inflight_requests,
                                     m.scheduler.max_queue_size) for key, m in self.models.items()}
        raise CallFailed(Failure("internal", f"unknown call {type(body).__name__}"))

    async def _load(self, spec: LoadModel) -> Signature | None:
        loop = asyncio.get_running_loop()
        padding: tuple[int, ...] = ()
        if PADDING in spec.parameters:
            try:
                padding = padding_sizes(spec.parameters[PADDING], spec.max_batch_size)
            except ValueError as exc:
                raise CallFailed(Failure("invalid", f"{spec.path}: parameters.{PADDING}: {exc}")) from None
        try:
            adapter, signature = await loop.run_in_executor(self._loader, _open, spec)
        except ModelLoadError as exc:
            raise CallFailed(Failure("invalid", str(exc))) from None
        except Exception as exc:
            raise CallFailed(Failure("internal", f"{spec.path}: {type(exc).__name__}: {exc}")) from None
        previous = self.models.get(spec.key)
        self.models[spec.key] = HostedModel(spec, adapter, padding)
        # A loaded model lives for good: keep its objects out of the cyclic collector's full passes,
        # which would otherwise stall this loop (and every frontend's answers) for milliseconds.
        gc.collect()
        gc.freeze()
        if previous is not None:
            await previous.close()
        return signature

    async def _warm_up(self, body: WarmUp) -> None:
        model = self.models.get(body.key)
        if model is None:
            raise CallFailed(Failure("internal", f"no model '{body.key}' to warm up"))
        started = time.perf_counter()
        await model.warm_up(body)
        log_event(log, "warmup_done", model=body.key, samples=len(body.samples), seconds=time.perf_counter() - started)

    def fences_moved(self) -> None:
        """A connection fenced a newer table, or closed: wake the unloads waiting for fences."""
        event, self._fences = self._fences, asyncio.Event()
        event.set()

    async def _fenced(self, generation: int) -> None:
        """Until every live data connection has fenced ``generation`` (none left can send the old key)."""
        while any(c.fenced < generation for c in self.connections):
            await self._fences.wait()

    async def _unload(self, key: str, after_generation: int) -> None:
        model = self.models.get(key)
        if model is None:
            return
        await self._fenced(after_generation)
        await model.close()
        if self.models.get(key) is model:
            del self.models[key]
        log_event(log, "model_freed", model=key)


def _settle(future: "asyncio.Future[ExecuteResult]", result: ExecuteResult | None, exc: BaseException | None) -> None:
    """On the loop: hand a batch's end to whoever waits for it (nobody, if the loop is closing)."""
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert result is not None
        future.set_result(result)


def _open(spec: LoadModel) -> tuple[RuntimeAdapter, Signature | None]:
    adapter = _adapter_class(spec.platform)(spec)
    return adapter, adapter.signature()


def _adapter_class(platform: str) -> type[RuntimeAdapter]:
    target = ADAPTERS.get(platform)
    if target is None:
        raise ModelLoadError(f"platform '{platform}' has no runtime adapter in this build")
    module_name, class_name = target.split(":")
    adapter: type[RuntimeAdapter] = getattr(importlib.import_module(module_name), class_name)
    return adapter


class FrontendConnection:
    """One frontend's data connection: its requests into the schedulers, their answers back."""

    def __init__(self, host: Host, inputs: Arena, outputs: Arena) -> None:
        self._host = host
        self._inputs = inputs
        self._outputs = outputs
        self.peer = Peer(self._on_message, self._lost)
        self._pending: dict[int, tuple[HostedModel, Pending]] = {}
        self._outbox: list[Outcome] = []
        #: The newest table generation this frontend has fenced (-1: none yet; its first message is one).
        self.fenced = -1
        host.connections.add(self)

    def _on_message(self, body: Any) -> Any:
        if isinstance(body, Submit):
            self._submit(body)
        elif isinstance(body, Fence):
            if body.generation > self.fenced:
                self.fenced = body.generation
                self._host.fences_moved()
        elif isinstance(body, Release):
            for offset in body.offsets:
                self._outputs.free(offset)
        elif isinstance(body, Cancel):
            entry = self._pending.get(body.id)
            if entry is not None:
                entry[0].scheduler.cancel(entry[1])
        elif isinstance(body, Failed):
            model = self._host.models.get(body.key)
            if model is not None:
                model.scheduler.stats.record_failure(body.ns)
        elif isinstance(body, StatsQuery):
            return {key: self._host.models[key].scheduler.stats.as_dict()
                    for key in body.keys if key in self._host.models}
        return None

    def _submit(self, request: Submit) -> None:
        for offset in request.release:
            self._outputs.free(offset)
        model = self._host.models.get(request.key)
        if model is None or model.unloading:
            name = request.key.rsplit(":", 2)[0]
            self._send(Outcome(request.id, error_kind="Unavailable",
                               error=f"model '{name}' is not loaded in the {self._host.framework} worker"))
            return
        inputs = {name: self._inputs.array(t) if isinstance(t, TensorRef) else t for name, t in request.inputs.items()}
        try:
            # Answered by ``_answered`` the moment the scheduler settles it (a batch that runs on the
            # loop: before enqueue returns).
            pending = model.scheduler.enqueue(inputs, request.outputs, request.rows, request.priority,
                                              request.timeout_s, request.trace,
                                              functools.partial(self._answered, request.id, request.received_ns,
                                                                model))
        except TensorGateError as exc:
            model.scheduler.stats.record_failure(time.monotonic_ns() - request.received_ns,
                                                 failure_reason(exc, executed=False))
            self._send(Outcome(request.id, error_kind=type(exc).__name__, error=exc.message))
            return
        if not pending.future.done():
            self._pending[request.id] = (model, pending)

    def _answered(self, request_id: int, received_ns: int, model: HostedModel, pending: Pending) -> None:
        self._pending.pop(request_id, None)
        future = pending.future
        if not self.peer.connected:
            return
        if future.cancelled():  # dropped from the queue: the frontend may now free its inputs
            self._send(Outcome(request_id, error_kind="Unavailable", error="cancelled"))
            return
        elapsed = time.monotonic_ns() - received_ns
        exc = future.exception()
        if exc is not None:
            model.scheduler.stats.record_failure(elapsed, failure_reason(exc, executed=True))
            message = exc.message if isinstance(exc, TensorGateError) else str(exc)
            self._send(Outcome(request_id, error_kind=type(exc).__name__, error=message))
            return
        model.scheduler.stats.success.add(elapsed)
        self._send(Outcome(request_id, {name: self._wire(array) for name, array in future.result().items()},
                           trace=pending.traced))

    def _wire(self, array: np.ndarray) -> WireTensor:
        ref = self._outputs.put(array)
        return ref if ref is not None else np.ascontiguousarray(array)

    def _send(self, outcome: Outcome) -> None:
        """Queue an answer; all answers ready in this turn of the loop go out as one frame."""
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(outcome)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        self.peer.notify(Results(outbox), flush=True)  # already one frame per batch: no need to wait a turn

    def _lost(self) -> None:
        """The frontend has gone: its queued requests leave the queues, nobody waits for the rest."""
        self._host.connections.discard(self)
        self._host.fences_moved()
        for model, pending in list(self._pending.values()):
            model.scheduler.cancel(pending)
        self._pending.clear()
        # Its memory goes with our fds; a batch still running on its inputs keeps their mapping alive.
        self._inputs.close()
        self._outputs.close()


class DataListener:
    """Accepts frontends' data connections: a hello with two arena fds, then framed messages."""

    def __init__(self, host: Host, address: str) -> None:
        self._host = host
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(socket_address(address))
        self._sock.listen(64)
        self._sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._accept)
        self._tasks: set[asyncio.Future[Any]] = set()

    def close(self) -> None:
        """Stop accepting connections (those made stay open)."""
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    def _accept(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self._loop.add_reader(conn.fileno(), self._hello, conn)

    def _hello(self, conn: socket.socket) -> None:
        self._loop.remove_reader(conn.fileno())
        try:
            message, fds, _, _ = socket.recv_fds(conn, HELLO.size, 2)
        except OSError:
            conn.close()
            return
        if len(message) != HELLO.size or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        in_size, out_size = HELLO.unpack(message)
        connection = FrontendConnection(self._host, Arena(in_size, fds[0]), Arena(out_size, fds[1]))
        task = asyncio.ensure_future(self._loop.connect_accepted_socket(lambda: connection.peer, conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(functools.partial(self._connected, connection))

    def _connected(self, connection: FrontendConnection, task: "asyncio.Future[Any]") -> None:
        if task.cancelled() or task.exception() is not None:  # never connected: no fence to wait for
            self._host.connections.discard(connection)
            self._host.fences_moved()


async def _serve(control_fd: int, framework: str, address: str) -> None:
    host = Host(framework)
    loop = asyncio.get_running_loop()
    _, control = await loop.create_unix_connection(lambda: Peer(host.handle_control),
                                                   sock=socket.socket(fileno=control_fd))
    DataListener(host, address)
    log_event(log, "worker_serving", level=logging.DEBUG, framework=framework, pid=os.getpid())
    await control.closed.wait()


def main(argv: list[str]) -> int:
    framework, address, log_level, log_format, control_fd = argv[0], argv[1], argv[2], argv[3], int(argv[4])
    configure(log_level, log_format, f"worker-{framework}")
    uvloop.run(_serve(control_fd, framework, address))
    # Framework thread pools (TensorFlow's, XLA's) can hold interpreter exit; the supervisor has
    # already failed whatever was in flight, so leave at once.
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
