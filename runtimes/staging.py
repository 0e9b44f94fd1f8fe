"""Gathering a batch straight into the memory its device copies from: pinned host memory for a GPU.

A GPU reads page-locked (pinned) host memory by DMA, asynchronously; from ordinary pageable memory
the driver first copies the bytes through a pinned bounce buffer of its own. Gathering the requests'
rows with numpy and then calling ``pin_memory()`` cost two host copies of every batch before its one
host-to-device copy. ``gather_into`` writes the rows once, into memory that ``allocate`` hands out.
The torch adapters on a GPU pass ``pinned_bytes``: torch's caching pinned-memory allocator, whose
blocks return to its cache when their tensor is freed and are handed out again only once the
copies that read them have completed. So a batch costs one host copy and one host-to-device copy.
"""

from collections.abc import Callable

import numpy as np

from gateway.scheduling.scheduler import Inputs

#: ``nbytes`` -> a writable, contiguous uint8 array of exactly that many bytes.
Allocate = Callable[[int], np.ndarray]


def gather_into(batch: list[Inputs], allocate: Allocate) -> Inputs:
    """The batch's inputs concatenated along the batch dimension, each into one block from ``allocate``
    (a lone request too: its arrays are views over the sender's arena, not memory a device copies from).
    A BYTES (object) input holds references, not bytes, and is gathered with numpy as it is."""
    gathered: Inputs = {}
    for name, first in batch[0].items():
        parts = [inputs[name] for inputs in batch]
        if first.dtype.hasobject:
            gathered[name] = np.concatenate(parts)
            continue
        lone = len(parts) == 1  # the one request of a model that does not batch may hold a scalar
        shape = first.shape if lone else (sum(part.shape[0] for part in parts), *first.shape[1:])
        out = allocate(int(np.prod(shape)) * first.dtype.itemsize).view(first.dtype).reshape(shape)
        if lone:
            out[...] = first
        else:
            np.concatenate(parts, out=out)
        gathered[name] = out
    return gathered


def pinned_bytes(nbytes: int) -> np.ndarray:
    """``nbytes`` of pinned host memory from torch's caching allocator (needs a CUDA build and a GPU)."""
    import torch  # only the torch adapters on a GPU allocate here; other workers never import torch

    array: np.ndarray = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).numpy()
    return array
