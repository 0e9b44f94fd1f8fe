"""The framing between the server's processes (gateway/workers/ipc.py), and Peer over real socket pairs."""

import asyncio
import pickle
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from gateway.contract import LoadModel, Submit, TensorRef, UnloadModel
from gateway.workers.ipc import CallFailed, ConnectionGone, Envelope, Failure, FrameDecoder, Peer, encode


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
    "submit": Submit(id=3, key="m:1", inputs={"x": np.arange(4, dtype=np.float32), "z": TensorRef(64, 16, "<f4", (4,))},
                     outputs=["y"], rows=1, priority=None, timeout_s=0.5, received_ns=12),
    "failure": Failure(kind="invalid", message="input 'x' is bad"),
    "reply": {"y": np.ones((2, 2), dtype=np.float32)},
    "none": None,
}


def _assert_bodies_equal(got: Any, want: Any) -> None:
    if isinstance(want, Submit):
        assert isinstance(got, Submit)
        assert (got.key, got.outputs, got.inputs["z"]) == (want.key, want.outputs, want.inputs["z"])
        _assert_arrays_equal(got.inputs["x"], want.inputs["x"])  # type: ignore[arg-type]
    elif isinstance(want, dict):
        assert set(got) == set(want)
        for name, array in want.items():
            _assert_arrays_equal(got[name], array)
    else:
        assert got == want


# --- Peer (both ends of every connection) -----------------------------------------------------------------------


def _echo(body: Any) -> Any:
    """The right-hand peer's handler: refuses, fails, answers later, or echoes."""
    if isinstance(body, str) and body == "refuse":
        raise CallFailed(Failure("invalid", "refused"))
    if isinstance(body, str) and body == "boom":
        raise RuntimeError("it broke")
    if isinstance(body, str) and body == "later":
        return asyncio.sleep(0.01, result="done later")
    return body


def with_peers(scenario: Callable[[Peer, Peer, list[Any]], Coroutine[Any, Any, None]]) -> None:
    """Run ``scenario(left, right, notices)`` over two Peers on a real socket pair."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        left_sock, right_sock = socket.socketpair()
        notices: list[Any] = []

        def handle(body: Any) -> Any:
            notices.append(body)
            return _echo(body)

        _, left = await loop.create_unix_connection(Peer, sock=left_sock)
        _, right = await loop.create_unix_connection(lambda: Peer(handle), sock=right_sock)
        try:
            await scenario(left, right, notices)
        finally:
            left.close()
            right.close()
            await asyncio.sleep(0)
    asyncio.run(main())


@pytest.mark.parametrize("kind", list(MESSAGES))
def test_peer_call_round_trip_of_each_message(kind: str) -> None:
    async def scenario(left: Peer, right: Peer, notices: list[Any]) -> None:
        if kind == "failure":  # a Failure as the reply is how a call fails
            with pytest.raises(CallFailed, match="input 'x' is bad"):
                await left.call(MESSAGES[kind])
        else:
            _assert_bodies_equal(await left.call(MESSAGES[kind]), MESSAGES[kind])
    with_peers(scenario)


@pytest.mark.parametrize("kind", list(ARRAYS))
def test_peer_call_round_trip_of_arrays(kind: str) -> None:
    async def scenario(left: Peer, right: Peer, notices: list[Any]) -> None:
        _assert_arrays_equal(await left.call(ARRAYS[kind]), ARRAYS[kind])
    with_peers(scenario)


def test_peer_round_trip_of_a_10_mb_array() -> None:
    array = np.random.default_rng(0).random(10 * 1024 * 1024 // 8)

    async def scenario(left: Peer, right: Peer, notices: list[Any]) -> None:
        _assert_arrays_equal((await left.call({"x": array}))["x"], array)
    with_peers(scenario)


def test_peer_notices_arrive_in_order_and_get_no_reply() -> None:
    async def scenario(left: Peer, right: Peer, notices: list[Any]) -> None:
        for i in range(3):
            left.notify(np.full(4, i))
        assert await left.call("last") == "last"
        assert [n.tolist() for n in notices[:3]] == [[i] * 4 for i in range(3)]
    with_peers(scenario)


def test_peer_calls_answered_later_and_concurrently() -> None:
    async def scenario(left: Peer, right: Peer, notices: list[Any]) -> None:
        assert list(await asyncio.gather(left.call("later"), left.call("now"))) == ["done later", "now"]
    with_peers(scenario)


def test_peer_refusals_and_handler_errors_come_back_as_call_failed() -> None:
    async def scenario(left: Peer, right: Peer, notices: list[Any]) -> None:
        with pytest.raises(CallFailed, match="refused") as refused:
            await left.call("refuse")
        assert refused.value.failure.kind == "invalid"
        with pytest.raises(CallFailed, match="RuntimeError: it broke"):
            await left.call("boom")
        assert await left.call("still serving") == "still serving"
    with_peers(scenario)


def test_peer_calls_in_flight_fail_when_the_connection_closes() -> None:
    async def scenario(left: Peer, right: Peer, notices: list[Any]) -> None:
        call = asyncio.ensure_future(right.call("no handler answers on the left"))
        await asyncio.sleep(0.01)
        pending = asyncio.ensure_future(left.call("later"))
        right.close()
        with pytest.raises(ConnectionGone):
            await pending
        with pytest.raises((CallFailed, ConnectionGone)):
            await call
        await left.closed.wait()
        with pytest.raises(ConnectionGone):
            await left.call("after the close")
    with_peers(scenario)


def test_decoder_rejects_a_frame_that_is_not_an_envelope() -> None:
    payload = pickle.dumps(("not", "an", "envelope"), protocol=5)
    with pytest.raises(TypeError, match="unexpected message tuple"):
        FrameDecoder().feed(struct.pack("<II", len(payload), 0) + payload)


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
