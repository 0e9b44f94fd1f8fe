"""Triton's system shared-memory extension: tensors passed by reference through POSIX shared memory.

A client on the same host creates a segment (``shm_open``: a file under ``/dev/shm``),
registers a window of it under a name, and then names that region instead of sending
data: an input's ``shared_memory_region``, ``shared_memory_byte_size`` and (optional, 0 by
default) ``shared_memory_offset`` parameters say where its bytes are; the same parameters
on a requested output say where to write the result, which then travels without data.

Two halves, kept apart so that several frontend processes can share one view:

* the *state* is a list of :class:`Registration` — plain, frozen, picklable values
  (``as_dict``/``from_dict`` for JSON). ``registrations()`` reads it and ``apply()`` makes
  another registry hold exactly that list, mapping what it does not map yet;
* the *mappings* are per process: each registry ``mmap``\\ s the segments itself.

Dropping a region only drops this registry's reference to its mapping: a request that
still holds a view of it (an input being batched, say) keeps the memory mapped until it is
done, so unregistering never pulls memory from under a request in flight.

A miss (a request names a region this process does not hold) calls the optional
``refresh`` callable once, applies what it returns and looks again — the hook through
which a frontend catches up with registrations made through another process.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any, Final

import numpy as np

from gateway.protocol.datatypes import numpy_dtype
from gateway.protocol.errors import AlreadyExists, InvalidRequest, LimitReached
from gateway.protocol.raw import array_from_raw, array_to_raw
from gateway.protocol.types import InferRequest, InferResponse, Parameters, SharedMemoryRef

__all__ = [
    "BYTE_SIZE",
    "DEFAULT_MAX_REGIONS",
    "OFFSET",
    "REGION",
    "RESERVED_KEY_PREFIX",
    "Registration",
    "SystemSharedMemory",
    "shared_memory_ref",
]

REGION: Final = "shared_memory_region"
OFFSET: Final = "shared_memory_offset"
BYTE_SIZE: Final = "shared_memory_byte_size"

#: Where Linux keeps POSIX shared-memory segments (what ``shm_open`` opens).
SHM_ROOT: Final = Path("/dev/shm")
DEFAULT_MAX_REGIONS: Final = 64
#: Segments whose key starts with this are the server's own: a client can never register them.
RESERVED_KEY_PREFIX: Final = "tensorgate"


@dataclass(frozen=True, slots=True)
class Registration:
    """One registered region: ``byte_size`` bytes at ``offset`` in the segment ``key``."""

    name: str
    key: str
    offset: int
    byte_size: int

    def as_dict(self) -> dict[str, Any]:
        """Triton's status entry for the region (also the JSON form of the value)."""
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> Registration:
        return cls(str(document["name"]), str(document["key"]), int(document["offset"]),
                   int(document["byte_size"]))


class SystemSharedMemory:
    """The regions one process has registered, each mapped read-write.

    ``max_regions`` bounds how many may be registered at once. ``root`` is where segments
    live (``/dev/shm``). ``refresh``, if given, returns the authoritative registrations; it
    is called when a request names a region this registry does not hold.
    """

    def __init__(self, max_regions: int = DEFAULT_MAX_REGIONS, root: Path = SHM_ROOT,
                 refresh: Callable[[], Iterable[Registration]] | None = None,
                 on_change: Callable[[list[Registration]], Awaitable[None]] | None = None) -> None:
        if max_regions < 0:
            raise ValueError("max_regions must be >= 0")
        self.max_regions = max_regions
        self.root = root
        self.refresh = refresh
        #: Told the registrations after each register/unregister (the frontend's supervisor shares
        #: them with every other frontend before the client gets its answer).
        self.on_change = on_change
        self._lock = threading.Lock()
        self._registrations: dict[str, Registration] = {}
        #: The region's bytes, by name; the memoryview keeps its mmap alive.
        self._views: dict[str, memoryview] = {}

    # -- registration ---------------------------------------------------------------------

    def register(self, name: str, key: str, offset: int, byte_size: int) -> Registration:
        """Map ``byte_size`` bytes at ``offset`` of segment ``key`` as region ``name``."""
        if not isinstance(name, str) or not name:
            raise InvalidRequest("a shared memory region needs a non-empty name")
        for field, value in (("offset", offset), ("byte_size", byte_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidRequest(
                    f"failed to register shared memory region '{name}': {field} must be a non-negative integer"
                )
        if byte_size == 0:
            raise InvalidRequest(f"failed to register shared memory region '{name}': byte_size must be at least 1")
        registration = Registration(name, key, offset, byte_size)
        with self._lock:
            if name in self._registrations:
                raise AlreadyExists(f"shared memory region '{name}' is already registered; unregister it first")
            if len(self._registrations) >= self.max_regions:
                raise LimitReached(
                    f"cannot register shared memory region '{name}': the server holds at most "
                    f"{self.max_regions} regions; unregister one first"
                )
            self._views[name] = self._map(registration)
            self._registrations[name] = registration
        return registration

    def unregister(self, name: str | None = None) -> None:
        """Forget region ``name``, or every region when ``name`` is empty or None.

        An unknown name is not an error (as in Triton): the region is not registered afterwards.
        """
        with self._lock:
            if name:
                self._registrations.pop(name, None)
                self._views.pop(name, None)
            else:
                self._registrations.clear()
                self._views.clear()

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        """Triton's status list: every region, or the one named (an unknown name is a 400)."""
        if not name:
            return [r.as_dict() for r in self.registrations()]
        registration = self._registrations.get(name)
        if registration is None:
            raise InvalidRequest(f"unknown shared memory region '{name}'")
        return [registration.as_dict()]

    async def changed(self) -> None:
        """Publish this registry's registrations (called by the routes after a change)."""
        if self.on_change is not None:
            await self.on_change(self.registrations())

    def registrations(self) -> list[Registration]:
        """The state: every registration, in the order they were made."""
        with self._lock:
            return list(self._registrations.values())

    def apply(self, registrations: Iterable[Registration]) -> dict[str, str]:
        """Make this registry hold exactly ``registrations`` (another process's state).

        Regions already mapped with the same registration are kept; others are dropped or
        mapped. A registration that cannot be mapped here (its segment is gone, say) is left
        out; the result maps its name to the reason. The region limit is not applied: the
        list comes from a registry that enforced it.
        """
        wanted = {r.name: r for r in registrations}
        failed: dict[str, str] = {}
        with self._lock:
            for name in [n for n, r in self._registrations.items() if wanted.get(n) != r]:
                del self._registrations[name]
                del self._views[name]
            for name, registration in wanted.items():
                if name in self._registrations:
                    continue
                try:
                    self._views[name] = self._map(registration)
                except InvalidRequest as exc:
                    failed[name] = exc.message
                else:
                    self._registrations[name] = registration
        return failed

    def close(self) -> None:
        """Drop every mapping (each is unmapped once no request holds a view of it)."""
        self.unregister(None)

    # -- tensors --------------------------------------------------------------------------

    def input_view(self, ref: SharedMemoryRef, datatype: str, shape: tuple[int, ...], tensor: str) -> np.ndarray:
        """The input ``tensor`` read in place from its region: a read-only view, no copy.

        BYTES tensors use the binary extension's serialisation (each element a 4-byte
        little-endian length, then its bytes) and are parsed into an object array.
        """
        window = self._window(ref, "input", tensor)
        dtype = numpy_dtype(datatype)
        if dtype.kind != "O":
            expected = prod(shape) * dtype.itemsize
            if ref.byte_size != expected:
                raise InvalidRequest(
                    f"input '{tensor}': shared_memory_byte_size {ref.byte_size} does not match shape "
                    f"{list(shape)} of {datatype} ({expected} bytes expected)"
                )
        return array_from_raw(window.toreadonly(), datatype, shape, tensor)

    def check_output(self, ref: SharedMemoryRef, tensor: str) -> None:
        """Refuse, before inference, an output placed in an unknown region or past its end."""
        self._window(ref, "output", tensor)

    def write_output(self, ref: SharedMemoryRef, array: np.ndarray, tensor: str) -> None:
        """Write the output ``tensor`` into its region (BYTES serialised as for inputs)."""
        raw = array_to_raw(array)
        if len(raw) > ref.byte_size:
            raise InvalidRequest(
                f"output '{tensor}' needs {len(raw)} bytes but its shared_memory_byte_size is {ref.byte_size}"
            )
        window = self._window(ref, "output", tensor)
        window[: len(raw)] = raw

    def place_outputs(self, request: InferRequest, response: InferResponse) -> dict[str, SharedMemoryRef] | None:
        """Write the outputs ``request`` placed in shared memory; their places by name, or None if none."""
        if not request.outputs:
            return None
        placed = {o.name: o.shared_memory for o in request.outputs if o.shared_memory is not None}
        if not placed:
            return None
        for output in response.outputs:
            ref = placed.get(output.name)
            if ref is not None:
                self.write_output(ref, output.data, output.name)
        return placed

    # -- internals ------------------------------------------------------------------------

    def _window(self, ref: SharedMemoryRef, role: str, tensor: str) -> memoryview:
        view = self._views.get(ref.region)
        if view is None and self.refresh is not None:
            self.apply(self.refresh())
            view = self._views.get(ref.region)
        if view is None:
            raise InvalidRequest(f"{role} '{tensor}': unknown shared memory region '{ref.region}'")
        end = ref.offset + ref.byte_size
        if end > len(view):
            raise InvalidRequest(
                f"{role} '{tensor}': shared_memory_offset {ref.offset} + shared_memory_byte_size "
                f"{ref.byte_size} runs past the end of region '{ref.region}' ({len(view)} bytes)"
            )
        return view[ref.offset : end]

    def _segment_path(self, registration: Registration) -> Path:
        key, name = registration.key, registration.name
        stem = key.lstrip("/") if isinstance(key, str) else ""
        if not stem or "/" in stem or stem in (".", "..") or "\0" in stem:
            raise InvalidRequest(
                f"failed to register shared memory region '{name}': key {key!r} is not a shared memory "
                "key (one name, optionally after a leading '/')"
            )
        if stem.startswith(RESERVED_KEY_PREFIX):
            raise InvalidRequest(
                f"failed to register shared memory region '{name}': keys starting with "
                f"'{RESERVED_KEY_PREFIX}' are reserved for the server's own segments"
            )
        return self.root / stem

    def _map(self, registration: Registration) -> memoryview:
        name, key, offset, byte_size = registration.name, registration.key, registration.offset, registration.byte_size
        path = self._segment_path(registration)
        failed = f"failed to register shared memory region '{name}'"
        try:
            # O_NOFOLLOW: never through a symlink; O_NONBLOCK: a FIFO planted there cannot hang us.
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise InvalidRequest(f"{failed}: no shared memory segment with key '{key}'") from None
        except PermissionError:
            raise InvalidRequest(f"{failed}: the server may not open shared memory segment '{key}'") from None
        except OSError as exc:
            raise InvalidRequest(f"{failed}: cannot open shared memory segment '{key}': {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidRequest(f"{failed}: '{key}' is not a shared memory segment")
            if offset + byte_size > info.st_size:
                raise InvalidRequest(
                    f"{failed}: offset {offset} + byte_size {byte_size} runs past the end of segment "
                    f"'{key}' ({info.st_size} bytes)"
                )
            lead = offset % mmap.ALLOCATIONGRANULARITY
            try:
                mapping = mmap.mmap(fd, lead + byte_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                                    offset=offset - lead)
            except OSError as exc:
                raise InvalidRequest(f"{failed}: cannot map segment '{key}': {exc.strerror}") from None
        finally:
            os.close(fd)
        return memoryview(mapping)[lead : lead + byte_size]


def shared_memory_ref(parameters: Parameters, role: str, tensor: str) -> SharedMemoryRef | None:
    """Take the shared-memory parameters out of ``parameters``; None when the tensor is not in shared memory.

    ``shared_memory_region`` and ``shared_memory_byte_size`` go together; an offset or a
    size without a region is an error, as in Triton.
    """
    region = parameters.pop(REGION, None)
    offset = parameters.pop(OFFSET, None)
    byte_size = parameters.pop(BYTE_SIZE, None)
    if region is None:
        if offset is not None or byte_size is not None:
            raise InvalidRequest(
                f"{role} '{tensor}': {OFFSET} and {BYTE_SIZE} can only be given with {REGION}"
            )
        return None
    if not isinstance(region, str) or not region:
        raise InvalidRequest(f"{role} '{tensor}': {REGION} must be a non-empty string")
    if byte_size is None:
        raise InvalidRequest(f"{role} '{tensor}': {BYTE_SIZE} must be given with {REGION}")
    for parameter, value in ((BYTE_SIZE, byte_size), (OFFSET, offset)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InvalidRequest(f"{role} '{tensor}': {parameter} must be a non-negative integer")
    assert isinstance(byte_size, int)
    return SharedMemoryRef(region, offset if isinstance(offset, int) else 0, byte_size)


#: Stands in when a codec is given no registry: every region is unknown.
NO_SHARED_MEMORY: Final = SystemSharedMemory(max_regions=0)
