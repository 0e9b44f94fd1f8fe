"""The standard ``process_*`` and ``python_*`` metrics of every process of the server.

Each process takes them from prometheus_client's own collectors (``ProcessCollector``,
``PlatformCollector``, ``GCCollector``): a frontend or a runtime worker answers
``ProcessSnapshot`` with its families, and the supervisor renders them with its own, each
family once, every sample labelled ``process`` (``supervisor``, ``frontend-N``,
``worker-FRAMEWORK``, as in the logs). So ``sum(process_resident_memory_bytes)`` is the whole
server's memory, ``process_resident_memory_bytes{process="supervisor"}`` the series a
single-process exporter would have, and the names are the ones every dashboard knows.
"""

import asyncio
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import Metric

from gateway.contract import ProcessSnapshot
from gateway.workers.process import ChildProcess

#: A scrape gives up on a child that does not answer within this long (its series are then missing).
SNAPSHOT_TIMEOUT_S = 10.0

#: This process's collectors, in a registry of their own (the default one is no part of the server's view).
_REGISTRY = CollectorRegistry(auto_describe=False)
ProcessCollector(registry=_REGISTRY)
PlatformCollector(registry=_REGISTRY)
GCCollector(registry=_REGISTRY)


def own_families() -> list[Metric]:
    """This process's families, as a child sends them in its answer to ``ProcessSnapshot``."""
    return list(_REGISTRY.collect())


def process_label(child: ChildProcess) -> str:
    return child.role if child.kind == "frontend" else f"{child.kind}-{child.role}"


async def children_families(children: Iterable[ChildProcess]) -> dict[str, list[Metric]]:
    """Every live child's families by its ``process`` label; one that fails or hangs is left out."""
    live = [child for child in children if child.alive]
    replies = await asyncio.gather(*(asyncio.wait_for(child.call(ProcessSnapshot()), SNAPSHOT_TIMEOUT_S)
                                     for child in live), return_exceptions=True)
    return {process_label(child): reply for child, reply in zip(live, replies, strict=True)
            if isinstance(reply, list)}


def labelled(by_process: Mapping[str, list[Metric]]) -> list[Metric]:
    """One family per name, its samples from every process with a ``process`` label."""
    merged: dict[str, Metric] = {}
    for process, families in by_process.items():
        for family in families:
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                target.add_sample(sample.name, {"process": process, **sample.labels}, sample.value, sample.timestamp)
    return list(merged.values())
