"""The system shared-memory registry and the codecs' shared-memory paths, over real /dev/shm segments.

Every segment a test creates is unlinked when it ends (the ``segments`` fixture checks).
"""

from __future__ import annotations

import gc
import mmap
import os
import pickle
import struct
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.protocol.errors import AlreadyExists, InvalidRequest, LimitReached
from gateway.protocol.json_codec import decode_request, encode_response
from gateway.protocol.proto_codec import decode_infer_request, encode_infer_response, encode_parameter
from gateway.protocol.raw import bytes_tensor_to_raw
from gateway.protocol.system_shm import (
    SHM_ROOT,
    Registration,
    SystemSharedMemory,
    shared_memory_ref,
)
from gateway.protocol.types import InferOutput, InferRequest, InferResponse, RequestedOutput, SharedMemoryRef

Segment = Callable[[int], str]


@pytest.fixture
def segments() -> Iterator[Segment]:
    """Make zero-filled /dev/shm segments of a given size; returns each one's key ('/name')."""
    made: list[Path] = []

    def make(size: int) -> str:
        name = f"tg_unit_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        fd = os.open(SHM_ROOT / name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        made.append(SHM_ROOT / name)
        return "/" + name

    yield make
    for path in made:
        path.unlink(missing_ok=True)
    assert not any(path.exists() for path in made)


def poke(key: str, offset: int, data: bytes) -> None:
    """Write ``data`` into segment ``key`` through a mapping of its own (as a client would)."""
    with open(SHM_ROOT / key.lstrip("/"), "r+b") as fh, mmap.mmap(fh.fileno(), 0) as mapping:
        mapping[offset : offset + len(data)] = data


def peek(key: str, offset: int, size: int) -> bytes:
    with open(SHM_ROOT / key.lstrip("/"), "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
        return bytes(mapping[offset : offset + size])


# -- registration ------------------------------------------------------------------------------


def test_register_status_unregister(segments: Segment) -> None:
    first, second = segments(64), segments(128)
    shm = SystemSharedMemory()
    shm.register("in", first, 0, 64)
    shm.register("out", second.lstrip("/"), 32, 96)  # a key without its leading '/' names the same segment
    assert shm.status() == [
        {"name": "in", "key": first, "offset": 0, "byte_size": 64},
        {"name": "out", "key": second.lstrip("/"), "offset": 32, "byte_size": 96},
    ]
    assert shm.status("out") == [{"name": "out", "key": second.lstrip("/"), "offset": 32, "byte_size": 96}]
    shm.unregister("in")
    assert [r.name for r in shm.registrations()] == ["out"]
    shm.unregister("never-registered")  # as in Triton: not an error
    shm.unregister()
    assert shm.status() == []


def test_unknown_region_status_is_a_400() -> None:
    with pytest.raises(InvalidRequest, match="unknown shared memory region 'nope'") as info:
        SystemSharedMemory().status("nope")
    assert info.value.http_status == 400


def test_wrong_key() -> None:
    with pytest.raises(InvalidRequest, match="no shared memory segment with key '/tg_unit_missing'"):
        SystemSharedMemory().register("r", "/tg_unit_missing", 0, 8)


@pytest.mark.parametrize("key", ["", "/", "a/b", "/a/b", "..", "/..", ".", "tensorgate_arena", 7])
def test_keys_that_are_not_one_segment_name(key: object) -> None:
    with pytest.raises(InvalidRequest, match="failed to register shared memory region 'r'"):
        SystemSharedMemory().register("r", key, 0, 8)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("offset", "byte_size", "message"),
    [(0, 65, "offset 0 \\+ byte_size 65 runs past the end of segment .* \\(64 bytes\\)"),
     (60, 8, "offset 60 \\+ byte_size 8 runs past the end"),
     (0, 0, "byte_size must be at least 1"),
     (-1, 8, "offset must be a non-negative integer"),
     (0, True, "byte_size must be a non-negative integer")],
)
def test_offset_and_size_must_fit_the_segment(segments: Segment, offset: int, byte_size: int, message: str) -> None:
    key = segments(64)
    with pytest.raises(InvalidRequest, match=message):
        SystemSharedMemory().register("r", key, offset, byte_size)


def test_duplicate_name_is_already_exists(segments: Segment) -> None:
    key = segments(64)
    shm = SystemSharedMemory()
    shm.register("r", key, 0, 64)
    with pytest.raises(AlreadyExists, match="region 'r' is already registered") as info:
        shm.register("r", key, 0, 32)
    assert (info.value.http_status, info.value.grpc_code) == (400, "ALREADY_EXISTS")
    assert shm.status("r")[0]["byte_size"] == 64


def test_the_number_of_regions_is_bounded(segments: Segment) -> None:
    key = segments(64)
    shm = SystemSharedMemory(max_regions=2)
    shm.register("a", key, 0, 8)
    shm.register("b", key, 8, 8)
    with pytest.raises(LimitReached, match="at most 2 regions") as info:
        shm.register("c", key, 16, 8)
    assert (info.value.http_status, info.value.grpc_code) == (400, "RESOURCE_EXHAUSTED")
    shm.unregister("a")
    shm.register("c", key, 16, 8)


def test_symlinks_and_other_files_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"\0" * 64)
    (tmp_path / "link").symlink_to(target)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    shm = SystemSharedMemory(root=tmp_path)
    shm.register("plain", "/target", 0, 64)
    for key in ("/link", "/fifo", "/dir"):
        with pytest.raises(InvalidRequest, match="failed to register shared memory region 'r'"):
            shm.register("r", key, 0, 8)


# -- tensors -----------------------------------------------------------------------------------


def test_input_is_a_read_only_view_of_the_segment(segments: Segment) -> None:
    key = segments(8192)
    shm = SystemSharedMemory()
    shm.register("r", key, 4100, 64)  # an offset that is not page-aligned
    poke(key, 4100 + 16, np.arange(6, dtype=np.float32).tobytes())
    array = shm.input_view(SharedMemoryRef("r", 16, 24), "FP32", (2, 3), "x")
    assert array.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert not array.flags.writeable
    poke(key, 4100 + 16, np.float32(9).tobytes())  # no copy: the client's later write shows
    assert array[0, 0] == 9


def test_input_size_and_bounds(segments: Segment) -> None:
    shm = SystemSharedMemory()
    shm.register("r", segments(64), 0, 64)
    with pytest.raises(InvalidRequest, match="input 'x': shared_memory_byte_size 12 does not match shape \\[1, 4\\]"):
        shm.input_view(SharedMemoryRef("r", 0, 12), "FP32", (1, 4), "x")
    with pytest.raises(InvalidRequest, match="input 'x': shared_memory_offset 56 \\+ shared_memory_byte_size 16 "
                                             "runs past the end of region 'r' \\(64 bytes\\)"):
        shm.input_view(SharedMemoryRef("r", 56, 16), "FP32", (1, 4), "x")
    with pytest.raises(InvalidRequest, match="input 'x': unknown shared memory region 'other'"):
        shm.input_view(SharedMemoryRef("other", 0, 16), "FP32", (1, 4), "x")


def test_bytes_tensors_use_length_prefixes(segments: Segment) -> None:
    key = segments(256)
    shm = SystemSharedMemory()
    shm.register("r", key, 0, 256)
    values = np.array([b"alpha", b"", "ünï".encode()], dtype=object)
    raw = bytes_tensor_to_raw(values)
    poke(key, 0, raw)
    assert shm.input_view(SharedMemoryRef("r", 0, len(raw)), "BYTES", (3,), "s").tolist() == values.tolist()
    with pytest.raises(InvalidRequest, match="left over after 3 BYTES elements"):
        shm.input_view(SharedMemoryRef("r", 0, len(raw) + 4), "BYTES", (3,), "s")
    shm.write_output(SharedMemoryRef("r", 128, 128), values[::-1].copy(), "out")
    assert peek(key, 128, len(raw)) == bytes_tensor_to_raw(values[::-1].copy())


def test_write_output_and_its_size_check(segments: Segment) -> None:
    key = segments(64)
    shm = SystemSharedMemory()
    shm.register("r", key, 0, 64)
    shm.write_output(SharedMemoryRef("r", 8, 16), np.array([[1, 2], [3, 4]], dtype=np.int32), "y")
    assert np.frombuffer(peek(key, 8, 16), np.int32).tolist() == [1, 2, 3, 4]
    with pytest.raises(InvalidRequest, match="output 'y' needs 32 bytes but its shared_memory_byte_size is 16"):
        shm.write_output(SharedMemoryRef("r", 0, 16), np.zeros(8, np.float32), "y")
    with pytest.raises(InvalidRequest, match="output 'y': unknown shared memory region 'gone'"):
        shm.check_output(SharedMemoryRef("gone", 0, 16), "y")


def test_unregistering_keeps_views_in_flight_valid(segments: Segment) -> None:
    key = segments(64)
    shm = SystemSharedMemory()
    shm.register("r", key, 0, 64)
    poke(key, 0, np.arange(4, dtype=np.int64).tobytes())
    array = shm.input_view(SharedMemoryRef("r", 0, 32), "INT64", (4,), "x")
    shm.unregister()
    gc.collect()
    assert array.tolist() == [0, 1, 2, 3]  # still mapped: the view holds the mapping


# -- state across processes --------------------------------------------------------------------


def test_registrations_are_plain_values_another_registry_applies(segments: Segment) -> None:
    key, other = segments(64), segments(64)
    first = SystemSharedMemory()
    first.register("a", key, 0, 32)
    first.register("b", key, 32, 32)
    state = pickle.loads(pickle.dumps(first.registrations()))
    assert [Registration.from_dict(orjson.loads(orjson.dumps(r.as_dict()))) for r in state] == state

    second = SystemSharedMemory()
    second.register("stale", other, 0, 8)
    assert second.apply(state) == {}
    assert second.registrations() == first.registrations()
    poke(key, 32, np.int32(7).tobytes())
    assert second.input_view(SharedMemoryRef("b", 0, 4), "INT32", (1,), "x").tolist() == [7]

    first.unregister("a")
    second.apply(first.registrations())
    assert [r.name for r in second.registrations()] == ["b"]


def test_apply_reports_what_it_could_not_map(segments: Segment) -> None:
    key = segments(64)
    shm = SystemSharedMemory()
    failed = shm.apply([Registration("ok", key, 0, 8), Registration("gone", "/tg_unit_missing", 0, 8)])
    assert list(failed) == ["gone"] and "no shared memory segment" in failed["gone"]
    assert [r.name for r in shm.registrations()] == ["ok"]


def test_a_miss_refreshes_from_the_authoritative_state(segments: Segment) -> None:
    key = segments(64)
    source = SystemSharedMemory()
    follower = SystemSharedMemory(refresh=source.registrations)
    source.register("late", key, 0, 64)
    poke(key, 0, np.float64(2.5).tobytes())
    assert follower.input_view(SharedMemoryRef("late", 0, 8), "FP64", (1,), "x").tolist() == [2.5]
    with pytest.raises(InvalidRequest, match="unknown shared memory region 'never'"):
        follower.input_view(SharedMemoryRef("never", 0, 8), "FP64", (1,), "x")


# -- parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "message"),
    [({"shared_memory_byte_size": 8}, "can only be given with shared_memory_region"),
     ({"shared_memory_offset": 0}, "can only be given with shared_memory_region"),
     ({"shared_memory_region": "r"}, "shared_memory_byte_size must be given"),
     ({"shared_memory_region": "", "shared_memory_byte_size": 8}, "non-empty string"),
     ({"shared_memory_region": 3, "shared_memory_byte_size": 8}, "non-empty string"),
     ({"shared_memory_region": "r", "shared_memory_byte_size": "8"}, "byte_size must be a non-negative integer"),
     ({"shared_memory_region": "r", "shared_memory_byte_size": 8, "shared_memory_offset": -1},
      "offset must be a non-negative integer")],
)
def test_bad_shared_memory_parameters(parameters: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        shared_memory_ref(dict(parameters), "input", "x")  # type: ignore[arg-type]


def test_parameters_are_taken_out() -> None:
    parameters: dict[str, bool | int | float | str] = {"shared_memory_region": "r", "shared_memory_byte_size": 8,
                                                       "other": 1}
    assert shared_memory_ref(parameters, "input", "x") == SharedMemoryRef("r", 0, 8)
    assert parameters == {"other": 1}
    assert shared_memory_ref({"other": 1}, "input", "x") is None


# -- codecs ------------------------------------------------------------------------------------


def shm_params(region: str, byte_size: int, offset: int = 0) -> dict[str, object]:
    return {"shared_memory_region": region, "shared_memory_byte_size": byte_size, "shared_memory_offset": offset}


def test_json_request_and_response_through_shared_memory(segments: Segment) -> None:
    key = segments(64)
    shm = SystemSharedMemory()
    shm.register("io", key, 0, 64)
    poke(key, 0, np.array([1, 2, 3, 4], np.float32).tobytes())
    body = orjson.dumps({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": shm_params("io", 16)},
                   {"name": "z", "datatype": "INT32", "shape": [1], "data": [5]}],
        "outputs": [{"name": "y", "parameters": shm_params("io", 16, 32)}, {"name": "w"}],
    })
    request = decode_request(body, None, "m", None, shm)
    assert request.inputs[0].data.tolist() == [[1, 2, 3, 4]] and request.inputs[0].parameters == {}
    assert request.outputs is not None and request.outputs[0].shared_memory == SharedMemoryRef("io", 32, 16)
    response = InferResponse("m", "1", [InferOutput("y", "FP32", np.array([[5, 6, 7, 8]], np.float32)),
                                        InferOutput("w", "INT32", np.array([9], np.int32))])
    placed = shm.place_outputs(request, response)
    assert np.frombuffer(peek(key, 32, 16), np.float32).tolist() == [5, 6, 7, 8]
    payload, header_length = encode_response(response, set(), placed)
    assert header_length is None
    outputs = orjson.loads(payload)["outputs"]
    assert outputs[0] == {"name": "y", "datatype": "FP32", "shape": [1, 4], "parameters": shm_params("io", 16, 32)}
    assert outputs[1]["data"] == [9]


def test_json_shared_memory_input_cannot_also_carry_data(segments: Segment) -> None:
    shm = SystemSharedMemory()
    shm.register("io", segments(64), 0, 64)
    item = {"name": "x", "datatype": "FP32", "shape": [1], "parameters": shm_params("io", 4), "data": [1]}
    with pytest.raises(InvalidRequest, match="input 'x' has both shared_memory_region and 'data'"):
        decode_request(orjson.dumps({"inputs": [item]}), None, "m", None, shm)


def test_json_unknown_region_without_a_registry() -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                                     "parameters": shm_params("io", 4)}]})
    with pytest.raises(InvalidRequest, match="input 'x': unknown shared memory region 'io'"):
        decode_request(body, None, "m", None)
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                         "outputs": [{"name": "y", "parameters": shm_params("io", 4)}]})
    with pytest.raises(InvalidRequest, match="output 'y': unknown shared memory region 'io'"):
        decode_request(body, None, "m", None)


def add_shm(tensor: pb.ModelInferRequest.InferInputTensor | pb.ModelInferRequest.InferRequestedOutputTensor,
            region: str, byte_size: int, offset: int = 0) -> None:
    for key, value in shm_params(region, byte_size, offset).items():
        tensor.parameters[key].CopyFrom(encode_parameter(value))  # type: ignore[arg-type]


def test_proto_raw_contents_skip_inputs_in_shared_memory(segments: Segment) -> None:
    key = segments(64)
    shm = SystemSharedMemory()
    shm.register("io", key, 0, 64)
    poke(key, 8, np.array([7, 8], np.int64).tobytes())
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="a", datatype="INT32", shape=[1])
    add_shm(message.inputs.add(name="b", datatype="INT64", shape=[2]), "io", 16, 8)
    message.inputs.add(name="c", datatype="INT32", shape=[1])
    message.raw_input_contents.extend([np.int32(1).tobytes(), np.int32(3).tobytes()])
    add_shm(message.outputs.add(name="y"), "io", 16, 32)
    request = decode_infer_request(message, shm)
    assert [t.data.tolist() for t in request.inputs] == [[1], [7, 8], [3]]

    message.raw_input_contents.append(np.int32(4).tobytes())
    with pytest.raises(InvalidRequest, match="raw_input_contents has 3 entries for 2 inputs outside shared memory"):
        decode_infer_request(message, shm)


def test_proto_response_keeps_raw_entries_aligned(segments: Segment) -> None:
    key = segments(64)
    shm = SystemSharedMemory()
    shm.register("io", key, 0, 64)
    request = InferRequest("m", None, [], outputs=[RequestedOutput("y", shared_memory=SharedMemoryRef("io", 0, 8)),
                                                    RequestedOutput("w")])
    response = InferResponse("m", "1", [InferOutput("y", "INT32", np.array([1, 2], np.int32)),
                                        InferOutput("w", "INT32", np.array([3], np.int32))])
    message = encode_infer_response(response, shm.place_outputs(request, response))
    assert list(message.raw_output_contents) == [b"", np.int32(3).tobytes()]
    y = message.outputs[0]
    assert list(y.shape) == [2] and y.parameters["shared_memory_region"].string_param == "io"
    assert y.parameters["shared_memory_byte_size"].int64_param == 8
    assert struct.unpack("<2i", peek(key, 0, 8)) == (1, 2)
