"""Shared tensor memory between a frontend and a runtime worker.

An ``Arena`` is one ``memfd`` (anonymous shared memory: no name in /dev/shm, so nothing to
leak and no /dev/shm size limit to hit in a container) mapped by both processes. Its fd
crosses once, with SCM_RIGHTS, when the frontend connects; the kernel frees the memory when
the last process holding it exits, however it exits.

Exactly one process allocates in a given arena (the frontend in its input arena, the worker in
the output arena it fills for that frontend), on its event loop, so the allocator needs no
lock: first fit over a sorted free list, 64-byte aligned blocks. The peer only reads (or is
told to free, by a message the owner applies). Allocation fails rather than waits when the
arena is full, and the caller sends that tensor inline instead: memory stays bounded.
"""

import contextlib
import mmap
import os
from bisect import bisect_left, insort

import numpy as np

from gateway.contract import TensorRef

ALIGN = 64


class Arena:
    """A shared mapping; ``alloc``/``free`` are only called in the one process that owns allocation."""

    def __init__(self, size: int, fd: int | None = None) -> None:
        self.size = size
        if fd is None:
            fd = os.memfd_create("tensorgate-arena", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
        self.fd = fd
        self._map = mmap.mmap(fd, size)
        self._view = memoryview(self._map)
        self.closed = False
        self._free: list[tuple[int, int]] = [(0, size)]  # (offset, size), sorted by offset
        self._blocks: dict[int, int] = {}

    @property
    def used(self) -> int:
        return sum(self._blocks.values())

    def alloc(self, nbytes: int) -> int | None:
        """The offset of a block of at least ``nbytes``, or None when no free block is large enough."""
        need = max(ALIGN, (nbytes + ALIGN - 1) // ALIGN * ALIGN)
        for i, (offset, size) in enumerate(self._free):
            if size >= need:
                if size == need:
                    del self._free[i]
                else:
                    self._free[i] = (offset + need, size - need)
                self._blocks[offset] = need
                return offset
        return None

    def free(self, offset: int) -> None:
        """Return a block (unknown offsets are ignored: a late release after a reset)."""
        size = self._blocks.pop(offset, None)
        if size is None:
            return
        insort(self._free, (offset, size))
        i = bisect_left(self._free, (offset, size))
        if i + 1 < len(self._free) and offset + size == self._free[i + 1][0]:
            size += self._free[i + 1][1]
            self._free[i] = (offset, size)
            del self._free[i + 1]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == offset:
            self._free[i - 1] = (self._free[i - 1][0], self._free[i - 1][1] + size)
            del self._free[i]

    def put(self, array: np.ndarray) -> TensorRef | None:
        """Copy ``array`` into a new block; None if it does not fit (or holds Python objects)."""
        if array.dtype.hasobject:
            return None
        offset = self.alloc(array.nbytes)
        if offset is None:
            return None
        target = np.ndarray(array.shape, array.dtype, self._view, offset)
        target[...] = array
        return TensorRef(offset, array.nbytes, array.dtype.str, tuple(array.shape))

    def array(self, ref: TensorRef) -> np.ndarray:
        """A view of the tensor ``ref`` (no copy)."""
        return np.ndarray(ref.shape, np.dtype(ref.dtype), self._view, ref.offset)

    def close(self) -> None:
        """Unmap and close the fd (views still alive keep the mapping until they are gone)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(BufferError):  # views still alive: the GC unmaps with the last one
            self._view.release()
            self._map.close()
        os.close(self.fd)
