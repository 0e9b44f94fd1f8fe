"""The contract every framework adapter fulfils, and the errors it reports.

An adapter owns one loaded model version inside a worker process. The worker calls
``execute`` from as many threads as the model has instances, so an adapter must be safe
to call concurrently (the frameworks' run calls are).
"""

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from gateway.contract import LoadModel, Signature
from gateway.scheduling.scheduler import Inputs, gather


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

    def gather(self, batch: list[Inputs]) -> Inputs:
        """The batch's requests as one input per name, for ``execute``: concatenated with numpy (a lone
        request as it is). An adapter whose device copies faster from other memory gathers into that."""
        return gather(batch)

    def close(self) -> None:  # noqa: B027 - optional hook; most adapters free memory on GC
        """Release the model's resources."""


def default_threads(instances: int) -> int:
    """Framework threads per instance so that all instances together fill, not oversubscribe, the CPUs."""
    return max(1, (os.cpu_count() or 1) // instances)


def cuda_index(device: str) -> int | None:
    """The GPU ordinal of a ``cuda:N`` device, or None for the CPU."""
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else None


def batch_buckets(max_batch_size: int, preferred: Sequence[int] = ()) -> tuple[int, ...]:
    """The batch sizes a shape-compiling runtime compiles: ``preferred`` (the configured
    dynamic_batching.preferred_batch_sizes) or else the powers of two, each up to
    ``max_batch_size``, which is always included so that every valid batch has a bucket."""
    if max_batch_size <= 0:
        return ()
    sizes = {s for s in preferred if 1 <= s <= max_batch_size}
    if not sizes:
        sizes = {1 << i for i in range(max_batch_size.bit_length()) if 1 << i <= max_batch_size}
    sizes.add(max_batch_size)
    return tuple(sorted(sizes))


def bucket_for(rows: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``rows`` (``buckets`` ascending); ``rows`` itself if none does."""
    for size in buckets:
        if size >= rows:
            return size
    return rows


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` with zero rows appended along the first axis up to ``rows`` (itself if already there)."""
    if array.shape[0] == rows:
        return array
    padded = np.zeros((rows, *array.shape[1:]), dtype=array.dtype)
    padded[: array.shape[0]] = array
    return padded
