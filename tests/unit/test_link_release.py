"""Output blocks freed by the frontend ride along with its next request (gateway/workers/link.py), over a real
data connection to an in-process worker (runtimes/worker.py) whose fake model runs on the worker's loop."""

from __future__ import annotations

import asyncio
import itertools
import os
import time

import numpy as np

from gateway.contract import LoadModel, Signature
from gateway.workers.link import RELEASE_DELAY_S, WorkerLink
from runtimes.base import RuntimeAdapter
from runtimes.worker import DataListener, Host, HostedModel

ARENA = 1 << 20
_names = itertools.count()


class Doubler(RuntimeAdapter):
    """y = 2x, at once."""

    def signature(self) -> Signature | None:
        return None

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"] * 2}


async def _setup() -> tuple[Host, WorkerLink, DataListener]:
    host = Host("fake")
    spec = LoadModel(key="m:1:1", model_name="m", path="/nowhere/m/1", platform="fake", max_batch_size=4,
                     device="cpu", instances=1, version="1")
    host.models[spec.key] = HostedModel(spec, Doubler(spec))
    address = f"tensorgate-test-release-{os.getpid()}-{next(_names)}"
    listener = DataListener(host, address)
    link = WorkerLink("fake", address, ARENA)
    await link.connect()
    link.fence(0)
    return host, link, listener


def _worker_outputs_used(host: Host) -> int:
    [connection] = host.connections
    return connection._outputs.used


async def _infer(link: WorkerLink, value: float) -> list[list[float]]:
    answer = await link.infer("m:1:1", "m", {"x": np.full((1, 2), value, dtype=np.float32)}, ["y"], 1, None, None,
                              time.monotonic_ns())
    values: list[list[float]] = np.array(answer.outputs["y"]).tolist()
    answer.release()
    return values


def test_freed_outputs_ride_along_with_the_next_request() -> None:
    async def scenario() -> None:
        host, link, listener = await _setup()
        for i in range(50):  # many more blocks than stay alive at once
            assert await _infer(link, float(i)) == [[2.0 * i, 2.0 * i]]
            assert link._release_timer is not None  # this answer's block waits for the next message
        await _infer(link, 0.0)
        await asyncio.sleep(0)
        assert _worker_outputs_used(host) <= 2 * 64  # only the blocks of the last answer or two are held
        link.close()
        listener.close()
    asyncio.run(scenario())


def test_freed_outputs_are_released_on_their_own_when_no_request_follows() -> None:
    async def scenario() -> None:
        host, link, listener = await _setup()
        await _infer(link, 1.0)
        assert link._release_timer is not None
        for _ in range(1000):  # the timer fires after RELEASE_DELAY_S; a loaded machine may take longer
            if _worker_outputs_used(host) == 0:
                break
            await asyncio.sleep(RELEASE_DELAY_S)
        assert _worker_outputs_used(host) == 0 and link._release_timer is None
        link.close()
        listener.close()
    asyncio.run(scenario())
