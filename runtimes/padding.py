"""Running a batch at a cheaper size: a model's ``parameters.pad_batches_to``.

A framework's CPU kernels choose their path by the number of rows, so a batch can cost more than a
bigger one: the anchors' MLP (TorchScript, one thread) takes 3.16 ms for 3 rows and 2.09 ms for 4,
and 2.92 ms for 7 rows against 2.68 ms for 8 (benchmarks/results/serving-path.md). With
``pad_batches_to: "1,4,8,12,16"`` a batch of n rows runs as the smallest listed size at or above n:
zero rows are appended in the same copy that gathers the batch, and their outputs are dropped
before anyone sees them. A batch above the largest size runs as it is (list 1 to keep lone
requests as they are). Which sizes pay depends on
the model and the machine: measure first (``tensorgate bench`` prints the offline time of every
batch size). Rows must be independent of each other, which dynamic batching assumes anyway.
"""

import bisect
from collections.abc import Callable

import numpy as np

from gateway.scheduling.scheduler import Inputs, gather

#: The model config's ``parameters`` key.
PARAMETER = "pad_batches_to"


def padding_sizes(value: object, max_batch_size: int) -> tuple[int, ...]:
    """The sizes in ``value`` ("1,4,8,12"), checked against the model's ``max_batch_size``."""
    if max_batch_size < 1:
        raise ValueError("needs a model that batches (max_batch_size >= 1)")
    try:
        sizes = sorted({int(part) for part in str(value).split(",")})
    except ValueError:
        raise ValueError(f"'{value}' is not a comma-separated list of batch sizes, like \"1,4,8,16\"") from None
    if sizes[0] < 1 or sizes[-1] > max_batch_size:
        raise ValueError(f"'{value}': each size must be between 1 and max_batch_size ({max_batch_size})")
    return tuple(sizes)


def padded_size(rows: int, sizes: tuple[int, ...]) -> int:
    """The size a batch of ``rows`` runs at: the smallest of ``sizes`` at or above it, else ``rows``."""
    index = bisect.bisect_left(sizes, rows)
    return sizes[index] if index < len(sizes) else rows


def gather_padded(batch: list[Inputs], sizes: tuple[int, ...],
                  gather: Callable[[list[Inputs]], Inputs] = gather) -> tuple[Inputs, int, int]:
    """The batch's inputs gathered with ``gather`` (padded with zero rows when a listed size fits), its
    real rows and the rows it runs at."""
    first = next(iter(batch[0]))
    rows = sum(inputs[first].shape[0] for inputs in batch)
    size = padded_size(rows, sizes)
    if size == rows:
        return gather(batch), rows, size
    zeros = {name: np.full((size - rows, *array.shape[1:]), b"" if array.dtype == object else 0, dtype=array.dtype)
             for name, array in batch[0].items()}
    return gather([*batch, zeros]), rows, size


def unpadded(outputs: dict[str, np.ndarray], rows: int, size: int) -> dict[str, np.ndarray]:
    """The real rows of outputs computed for ``size`` rows (views). An output of another length is left
    as it is, so the scheduler still refuses it as it would without padding."""
    if size == rows:
        return outputs
    return {name: array[:rows] if array.ndim and array.shape[0] == size else array
            for name, array in outputs.items()}
