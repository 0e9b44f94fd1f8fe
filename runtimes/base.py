"""The contract every framework adapter fulfils, and the errors it reports.

An adapter owns one loaded model version inside a worker process. The worker calls
``execute`` from as many threads as the model has instances, so an adapter must be safe
to call concurrently (the frameworks' run calls are).
"""

import os
from abc import ABC, abstractmethod

import numpy as np

from gateway.repository.signature import Signature
from gateway.workers.ipc import LoadModel


class ModelLoadError(Exception):
    """The model cannot be loaded; the message names the file and the reason."""


class InvalidInput(Exception):
    """The batch does not fit the model (reported to the client as 400)."""


class RuntimeAdapter(ABC):
    """One loaded model version."""

    def __init__(self, spec: LoadModel) -> None:
        self.spec = spec

    @abstractmethod
    def signature(self) -> Signature | None:
        """The model's own inputs and outputs with full shapes (batch included), if the format has them."""

    @abstractmethod
    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Run one batch and return the named outputs."""

    def close(self) -> None:  # noqa: B027 - optional hook; most adapters free memory on GC
        """Release the model's resources."""


def default_threads(instances: int) -> int:
    """Framework threads per instance so that all instances together fill, not oversubscribe, the CPUs."""
    return max(1, (os.cpu_count() or 1) // instances)


def cuda_index(device: str) -> int | None:
    """The GPU ordinal of a ``cuda:N`` device, or None for the CPU."""
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else None
