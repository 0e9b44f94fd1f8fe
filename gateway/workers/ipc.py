"""The framing both ends of a worker's socket speak.

A message is any picklable object, pickled with protocol 5 so that numpy arrays travel
*out of band*: their memory is written to the socket as-is after the pickle, and the
receiver's arrays are views over the bytes it read. A tensor therefore crosses the process
boundary as one bulk copy through the kernel, with no per-element work::

    frame  = u32 pickle_len | u32 buffer_count | u64 buffer_len * buffer_count
             | pickle bytes | buffer 0 | buffer 1 | ...

This module is imported by the gateway and by the worker process, and by nothing that
knows a framework or a transport.
"""

import pickle
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_PREFIX = struct.Struct("<II")
_LENGTH = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class LoadModel:
    """Load one model version into the worker under ``key``."""

    key: str
    model_name: str
    path: str
    platform: str
    max_batch_size: int
    device: str
    instances: int
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: list[tuple[str, str]] | None = None
    outputs: list[tuple[str, str]] | None = None
    #: dynamic_batching.preferred_batch_sizes: runtimes that compile per shape (JAX) pad batches to these.
    preferred_batch_sizes: tuple[int, ...] = ()
    #: default_model_filename: the model file (folder for SavedModel) in ``path``; None: the adapter's default.
    filename: str | None = None


@dataclass(frozen=True, slots=True)
class UnloadModel:
    key: str


@dataclass(frozen=True, slots=True)
class Execute:
    """Run one batch: inputs by name, and the outputs wanted (in that order)."""

    key: str
    inputs: dict[str, np.ndarray]
    outputs: list[str]


@dataclass(frozen=True, slots=True)
class ExecuteResult:
    """A batch's outputs, and when execution started and finished (``time.monotonic_ns``,
    a clock shared by every process on the machine)."""

    outputs: dict[str, np.ndarray]
    started_ns: int
    finished_ns: int


@dataclass(frozen=True, slots=True)
class Envelope:
    """What travels: a call id and its payload, or a reply to that call id."""

    call_id: int
    body: Any


@dataclass(frozen=True, slots=True)
class Failure:
    """A call that failed in the worker. ``kind`` is 'invalid' (the input) or 'internal'."""

    kind: str
    message: str


def encode(message: Envelope) -> list[bytes | memoryview]:
    """The frame for ``message`` as a list of buffers to write in order (no joining copy)."""
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    header = _PREFIX.pack(len(payload), len(raws)) + b"".join(_LENGTH.pack(r.nbytes) for r in raws)
    return [header, payload, *raws]


def _decode(payload: bytes, buffers: list[bytes] | list[bytearray]) -> Envelope:
    message = pickle.loads(payload, buffers=buffers)
    if not isinstance(message, Envelope):
        raise TypeError(f"unexpected message {type(message).__name__}")
    return message


class FrameDecoder:
    """The gateway's end: feed bytes as they arrive, take whole messages out.

    Push-based, so an asyncio Protocol decodes every complete frame in one ``data_received``
    call instead of suspending once per field.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Envelope]:
        buffer = self._buffer
        buffer += data
        messages = []
        while len(buffer) >= _PREFIX.size:
            payload_len, count = _PREFIX.unpack_from(buffer)
            head = _PREFIX.size + 8 * count
            if len(buffer) < head:
                break
            lengths = struct.unpack_from(f"<{count}Q", buffer, _PREFIX.size)
            end = head + payload_len + sum(lengths)
            if len(buffer) < end:
                break
            with memoryview(buffer) as view:
                payload = bytes(view[head : head + payload_len])
                position = head + payload_len
                buffers = []
                for n in lengths:
                    buffers.append(bytes(view[position : position + n]))
                    position += n
            del buffer[:end]
            messages.append(_decode(payload, buffers))
        return messages


class SocketChannel:
    """The worker's blocking end: one reader thread, replies from many threads."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()

    def receive(self) -> Envelope | None:
        """The next message, or None when the gateway has closed the socket."""
        prefix = self._read_exactly(_PREFIX.size)
        if prefix is None:
            return None
        payload_len, count = _PREFIX.unpack(prefix)
        table = self._read_exactly(8 * count) if count else bytearray()
        if table is None:
            return None
        lengths = struct.unpack(f"<{count}Q", table)
        payload = self._read_exactly(payload_len)
        if payload is None:
            return None
        buffers = []
        for n in lengths:
            buffer = self._read_exactly(n) if n else bytearray()
            if buffer is None:
                return None
            buffers.append(buffer)
        return _decode(bytes(payload), buffers)

    def send(self, message: Envelope) -> None:
        parts = encode(message)
        with self._send_lock:
            for part in parts:
                self._sock.sendall(part)

    def _read_exactly(self, n: int) -> bytearray | None:
        buffer = bytearray(n)
        view = memoryview(buffer)
        got = 0
        while got < n:
            chunk = self._sock.recv_into(view[got:], n - got)
            if chunk == 0:
                return None
            got += chunk
        return buffer
