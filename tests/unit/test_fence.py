"""The unload fence between frontends and a runtime worker (runtimes/worker.py, gateway/workers/link.py),
over real data connections (abstract Unix sockets, memfd arenas) with an in-process fake adapter.

The race it closes: a frontend writes a request for the old instance, then applies the new table;
the worker reads the supervisor's unload first. The unload must wait for that frontend's fence,
so the request (ahead of the fence in the same stream) is accepted by the old instance and answered.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Coroutine
from typing import Any

import numpy as np
import pytest

from gateway.contract import LoadModel, Signature, UnloadModel, WarmUp, WarmupInput, WarmupSample
from gateway.protocol.errors import Unavailable
from gateway.workers.ipc import CallFailed
from gateway.workers.link import WorkerLink
from runtimes.base import RuntimeAdapter
from runtimes.worker import DataListener, Host, HostedModel

ARENA = 1 << 20
_names = itertools.count()


class HeldAdapter(RuntimeAdapter):
    """y = 2x; every execute waits until the test opens the gate, and is recorded."""

    def __init__(self, spec: LoadModel) -> None:
        super().__init__(spec)
        self.gate = threading.Event()
        self.calls: list[dict[str, np.ndarray]] = []

    def signature(self) -> Signature | None:
        return None

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        self.calls.append(inputs)
        if not self.gate.wait(timeout=30):
            raise RuntimeError("the test never opened the gate")
        if "x" not in inputs:
            raise ValueError("no input x")
        return {"y": inputs["x"] * 2}


def _spec(key: str) -> LoadModel:
    return LoadModel(key=key, model_name="m", path="/nowhere/m/1", platform="fake", max_batch_size=4,
                     device="cpu", instances=1, version="1")


def _address() -> str:
    return f"tensorgate-test-fence-{os.getpid()}-{next(_names)}"


def _x(value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 2), value, dtype=np.float32)}


async def _infer(link: WorkerLink, key: str, value: float) -> np.ndarray:
    answer = await link.infer(key, "m", _x(value), ["y"], 1, None, None, 0)
    try:
        return np.array(answer.outputs["y"])
    finally:
        answer.release()


async def _turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0.001)


def run(test: Coroutine[Any, Any, None]) -> None:
    asyncio.run(test)


def _host() -> tuple[Host, HostedModel, str, DataListener]:
    host = Host("fake")
    spec = _spec("m:1:1")
    model = HostedModel(spec, HeldAdapter(spec))
    host.models[spec.key] = model
    address = _address()
    return host, model, address, DataListener(host, address)


def test_an_unload_waits_for_every_fence_so_a_request_sent_before_it_is_answered() -> None:
    async def scenario() -> None:
        host, model, address, listener = _host()
        adapter = model.adapter
        assert isinstance(adapter, HeldAdapter)
        first, second = WorkerLink("fake", address, ARENA), WorkerLink("fake", address, ARENA)
        await first.connect()
        await second.connect()
        first.fence(1)
        second.fence(1)
        running = asyncio.create_task(_infer(first, "m:1:1", 1.0))
        await _turns()
        unload = asyncio.create_task(host.handle_control(UnloadModel("m:1:1", 2)))
        await _turns()
        assert not unload.done() and "m:1:1" in host.models  # nobody has fenced table 2 yet
        # The race: frontend 1 wrote this request for the old key before it applied table 2.
        late = asyncio.create_task(_infer(first, "m:1:1", 2.0))
        await _turns()
        first.fence(2)
        await _turns()
        assert not unload.done()  # frontend 2 has not fenced yet
        second.fence(2)
        await _turns()
        adapter.gate.set()
        assert (await running).tolist() == [[2.0, 2.0]]
        assert (await late).tolist() == [[4.0, 4.0]]  # accepted by the old instance, answered by it
        await unload
        assert "m:1:1" not in host.models
        with pytest.raises(Unavailable, match="not loaded"):
            await _infer(first, "m:1:1", 3.0)
        first.close()
        second.close()
        listener.close()
        await _turns()
    run(scenario())


def test_a_connection_that_closes_or_opens_later_never_holds_an_unload() -> None:
    async def scenario() -> None:
        host, model, address, listener = _host()
        assert isinstance(model.adapter, HeldAdapter)
        model.adapter.gate.set()
        silent = WorkerLink("fake", address, ARENA)
        await silent.connect()  # never fences
        unload = asyncio.create_task(host.handle_control(UnloadModel("m:1:1", 5)))
        await _turns()
        assert not unload.done()
        later = WorkerLink("fake", address, ARENA)
        await later.connect()
        later.fence(5)  # a frontend that connects later sends its current generation first
        await _turns()
        assert not unload.done()
        silent.close()  # gone: nothing more can come from it
        await asyncio.wait_for(unload, 10)
        assert "m:1:1" not in host.models and len(host.connections) == 1
        later.close()
        listener.close()
        await _turns()
    run(scenario())


def test_warm_up_runs_each_sample_through_the_adapter_and_a_failure_names_it() -> None:
    async def scenario() -> None:
        host, model, _, listener = _host()
        adapter = model.adapter
        assert isinstance(adapter, HeldAdapter)
        adapter.gate.set()
        sample = WarmupSample("w", 3, 2, (WarmupInput("x", "FP32", (2,), "random"),))
        await host.handle_control(WarmUp("m:1:1", (sample,), ("y",)))
        assert [call["x"].shape for call in adapter.calls] == [(3, 2), (3, 2)]
        wrong = WarmupSample("bad", 1, 1, (WarmupInput("z", "FP32", (2,), "zero"),))
        with pytest.raises(CallFailed, match="warm-up sample 'bad' failed: ValueError: no input x"):
            await host.handle_control(WarmUp("m:1:1", (wrong,), ("y",)))
        listener.close()
        await host.handle_control(UnloadModel("m:1:1"))
    run(scenario())

