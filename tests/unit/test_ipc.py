"""The worker socket framing (gateway/workers/ipc.py) over real socket pairs."""

import pickle
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from gateway.workers.ipc import (
    Envelope,
    Execute,
    Failure,
    FrameDecoder,
    LoadModel,
    SocketChannel,
    UnloadModel,
    encode,
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    yield left, right
    left.close()
    right.close()


def _send_in_background(sock: socket.socket, message: Envelope) -> threading.Thread:
    """Send from a thread, so a frame larger than the socket buffer cannot deadlock the test."""
    thread = threading.Thread(target=SocketChannel(sock).send, args=(message,))
    thread.start()
    return thread


def _round_trip(pair: tuple[socket.socket, socket.socket], message: Envelope) -> Envelope:
    sender = _send_in_background(pair[0], message)
    received = SocketChannel(pair[1]).receive()
    sender.join()
    assert received is not None
    return received


def _decoded(message: Envelope, chunk: int = 7) -> Envelope:
    """Encode, then feed the decoder a few bytes at a time, as a socket may deliver them."""
    data = b"".join(bytes(part) for part in encode(message))
    decoder = FrameDecoder()
    out: list[Envelope] = []
    for start in range(0, len(data), chunk):
        out.extend(decoder.feed(data[start : start + chunk]))
    [received] = out
    return received


def _assert_arrays_equal(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert np.array_equal(got, want)


ARRAYS: dict[str, np.ndarray] = {
    "fp32": np.arange(12, dtype=np.float32).reshape(3, 4),
    "int64": np.array([-(2**63), 0, 2**63 - 1], dtype=np.int64),
    "bool": np.array([True, False]),
    "fp16": np.array([0.5, 1.5], dtype=np.float16),
    "bf16": np.array([1.0, -2.0], dtype=ml_dtypes.bfloat16),
    "bytes": np.array([b"a", b"", b"\xff\x00"], dtype=object),
    "empty": np.zeros((0, 3), dtype=np.float32),
    "scalar": np.array(7, dtype=np.int32),
    "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
    "strided": np.arange(10, dtype=np.float64)[::3],
}


MESSAGES: dict[str, Any] = {
    "load": LoadModel(key="m:1", model_name="m", path="/repo/m/1", platform="onnx", max_batch_size=8,
                      device="cpu", instances=2, parameters={"threads": 2}, inputs=[("x", "FP32")],
                      outputs=[("y", "FP32")]),
    "unload": UnloadModel(key="m:1"),
    "execute": Execute(key="m:1", inputs={"x": np.arange(4, dtype=np.float32)}, outputs=["y"]),
    "failure": Failure(kind="invalid", message="input 'x' is bad"),
    "reply": {"y": np.ones((2, 2), dtype=np.float32)},
    "none": None,
}


def _assert_bodies_equal(got: Any, want: Any) -> None:
    if isinstance(want, Execute):
        assert isinstance(got, Execute)
        assert (got.key, got.outputs, set(got.inputs)) == (want.key, want.outputs, set(want.inputs))
        for name, array in want.inputs.items():
            _assert_arrays_equal(got.inputs[name], array)
    elif isinstance(want, dict):
        assert set(got) == set(want)
        for name, array in want.items():
            _assert_arrays_equal(got[name], array)
    else:
        assert got == want


# --- SocketChannel (the worker's blocking end) ------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(MESSAGES))
def test_channel_round_trip_of_each_message(pair: tuple[socket.socket, socket.socket], kind: str) -> None:
    received = _round_trip(pair, Envelope(call_id=42, body=MESSAGES[kind]))
    assert received.call_id == 42
    _assert_bodies_equal(received.body, MESSAGES[kind])


@pytest.mark.parametrize("kind", list(ARRAYS))
def test_channel_round_trip_of_arrays(pair: tuple[socket.socket, socket.socket], kind: str) -> None:
    received = _round_trip(pair, Envelope(1, ARRAYS[kind]))
    _assert_arrays_equal(received.body, ARRAYS[kind])


def test_channel_round_trip_of_a_10_mb_array(pair: tuple[socket.socket, socket.socket]) -> None:
    array = np.random.default_rng(0).random(10 * 1024 * 1024 // 8)
    received = _round_trip(pair, Envelope(1, Execute("k", {"x": array}, ["y"])))
    _assert_arrays_equal(received.body.inputs["x"], array)


def test_channel_receives_several_messages_in_order(pair: tuple[socket.socket, socket.socket]) -> None:
    sender = SocketChannel(pair[0])
    for call_id in range(3):
        sender.send(Envelope(call_id, np.full(4, call_id)))
    receiver = SocketChannel(pair[1])
    for call_id in range(3):
        received = receiver.receive()
        assert received is not None
        assert received.call_id == call_id
        assert received.body.tolist() == [call_id] * 4


def test_channel_received_arrays_are_writable(pair: tuple[socket.socket, socket.socket]) -> None:
    received = _round_trip(pair, Envelope(1, np.zeros(3, dtype=np.float32)))
    received.body[0] = 1.0
    assert received.body.tolist() == [1.0, 0.0, 0.0]


def test_channel_receive_returns_none_on_closed_socket(pair: tuple[socket.socket, socket.socket]) -> None:
    pair[0].close()
    assert SocketChannel(pair[1]).receive() is None


def test_channel_receive_returns_none_after_the_last_message(pair: tuple[socket.socket, socket.socket]) -> None:
    SocketChannel(pair[0]).send(Envelope(1, "bye"))
    pair[0].close()
    receiver = SocketChannel(pair[1])
    received = receiver.receive()
    assert received is not None and received.body == "bye"
    assert receiver.receive() is None


def test_channel_receive_returns_none_when_closed_inside_the_payload(
        pair: tuple[socket.socket, socket.socket]) -> None:
    frame = b"".join(bytes(part) for part in encode(Envelope(1, "a message")))
    pair[0].sendall(frame[:-3])
    pair[0].close()
    assert SocketChannel(pair[1]).receive() is None


def test_channel_receive_returns_none_when_closed_inside_the_length_table(
        pair: tuple[socket.socket, socket.socket]) -> None:
    header = bytes(encode(Envelope(1, np.arange(4)))[0])
    pair[0].sendall(header[:12])
    pair[0].close()
    assert SocketChannel(pair[1]).receive() is None


def test_channel_rejects_a_frame_that_is_not_an_envelope(pair: tuple[socket.socket, socket.socket]) -> None:
    payload = pickle.dumps(("not", "an", "envelope"), protocol=5)
    pair[0].sendall(struct.pack("<II", len(payload), 0) + payload)
    with pytest.raises(TypeError, match="unexpected message tuple"):
        SocketChannel(pair[1]).receive()


# --- encode ----------------------------------------------------------------------------------------------------


def test_encode_sends_array_memory_out_of_band() -> None:
    array = np.arange(1000, dtype=np.float64)
    header, payload, *buffers = encode(Envelope(1, array))
    assert len(buffers) == 1
    assert bytes(buffers[0]) == array.tobytes()
    assert len(payload) < array.nbytes
    assert np.shares_memory(np.frombuffer(buffers[0], dtype=np.uint8), array)
    assert len(header) == 8 + 8


def test_encode_of_object_arrays_stays_in_band() -> None:
    header, _payload, *buffers = encode(Envelope(1, np.array([b"x", b"y"], dtype=object)))
    assert buffers == []
    assert len(header) == 8


# --- FrameDecoder (the gateway's end) ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(MESSAGES))
def test_decoder_round_trip_of_each_message(kind: str) -> None:
    received = _decoded(Envelope(call_id=7, body=MESSAGES[kind]))
    assert received.call_id == 7
    _assert_bodies_equal(received.body, MESSAGES[kind])


@pytest.mark.parametrize("kind", list(ARRAYS))
def test_decoder_round_trip_of_arrays(kind: str) -> None:
    _assert_arrays_equal(_decoded(Envelope(1, ARRAYS[kind])).body, ARRAYS[kind])


def test_decoder_round_trip_of_a_10_mb_array() -> None:
    array = np.arange(10 * 1024 * 1024 // 4, dtype=np.int32)
    received = _decoded(Envelope(1, {"y": array}), chunk=1 << 16)
    _assert_arrays_equal(received.body["y"], array)


def test_decoder_returns_every_whole_frame_of_one_read_and_keeps_the_rest() -> None:
    frames = [b"".join(bytes(p) for p in encode(Envelope(i, {"y": np.full(3, i)}))) for i in range(3)]
    data = b"".join(frames)
    decoder = FrameDecoder()
    first = decoder.feed(data[: len(frames[0]) + len(frames[1]) + 5])
    assert [m.call_id for m in first] == [0, 1]
    assert decoder.feed(b"") == []
    [last] = decoder.feed(data[len(frames[0]) + len(frames[1]) + 5 :])
    assert last.call_id == 2 and last.body["y"].tolist() == [2, 2, 2]
